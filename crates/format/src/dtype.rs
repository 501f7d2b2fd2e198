//! On-disk element types and their decoding to f32.

use std::fmt;

/// Element types glm5 reads from checkpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F16,
    BF16,
    /// `float8_e4m3fn`: 1 sign, 4 exponent (bias 7), 3 mantissa bits, no infinities, 0x7f/0xff NaN.
    F8E4M3,
    I64,
    I32,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F32 | DType::I32 => 4,
            DType::F16 | DType::BF16 => 2,
            DType::F8E4M3 => 1,
            DType::I64 => 8,
        }
    }

    /// The safetensors header spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            DType::F32 => "F32",
            DType::F16 => "F16",
            DType::BF16 => "BF16",
            DType::F8E4M3 => "F8_E4M3",
            DType::I64 => "I64",
            DType::I32 => "I32",
        }
    }

    pub(crate) fn from_safetensors(d: safetensors::Dtype) -> Option<DType> {
        use safetensors::Dtype as S;
        Some(match d {
            S::F32 => DType::F32,
            S::F16 => DType::F16,
            S::BF16 => DType::BF16,
            S::F8_E4M3 => DType::F8E4M3,
            S::I64 => DType::I64,
            S::I32 => DType::I32,
            _ => return None,
        })
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// bf16 bits -> f32 (exact).
#[inline]
pub fn bf16_to_f32(bits: u16) -> f32 {
    f32::from_bits((bits as u32) << 16)
}

/// f32 -> bf16 bits, round to nearest even (what PyTorch does), NaN stays NaN.
#[inline]
pub fn f32_to_bf16(x: f32) -> u16 {
    half::bf16::from_f32(x).to_bits()
}

/// Table of all 256 e4m3fn codes, built once.
fn fp8_table() -> &'static [f32; 256] {
    static TABLE: std::sync::OnceLock<[f32; 256]> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        let mut t = [0f32; 256];
        for (code, v) in t.iter_mut().enumerate() {
            *v = fp8_e4m3_decode_slow(code as u8);
        }
        t
    })
}

fn fp8_e4m3_decode_slow(code: u8) -> f32 {
    let sign = if code & 0x80 != 0 { -1.0f32 } else { 1.0 };
    let exp = ((code >> 3) & 0x0f) as i32;
    let man = (code & 0x07) as f32;
    if exp == 0x0f && (code & 0x07) == 0x07 {
        return f32::NAN;
    }
    if exp == 0 {
        sign * man / 8.0 * 2f32.powi(-6)
    } else {
        sign * (1.0 + man / 8.0) * 2f32.powi(exp - 7)
    }
}

/// e4m3fn code -> f32 (exact).
#[inline]
pub fn fp8_e4m3_to_f32(code: u8) -> f32 {
    fp8_table()[code as usize]
}

/// f32 -> e4m3fn code, round to nearest even, saturating to +-448 (PyTorch's `.to(float8_e4m3fn)`
/// of a clamped value). NaN maps to 0x7f.
pub fn f32_to_fp8_e4m3(x: f32) -> u8 {
    if x.is_nan() {
        return 0x7f;
    }
    let sign: u8 = if x.is_sign_negative() { 0x80 } else { 0 };
    let a = x.abs().min(448.0);
    // Binary search over the 127 non-negative finite codes (monotone in value).
    let table = fp8_table();
    let (mut lo, mut hi) = (0u8, 0x7eu8);
    while lo < hi {
        let mid = (lo + hi).div_ceil(2);
        if table[mid as usize] <= a {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    let below = lo;
    let code = if below == 0x7e {
        below
    } else {
        let (vb, va) = (table[below as usize], table[below as usize + 1]);
        let (db, da) = (a - vb, va - a);
        if db < da || (db == da && below % 2 == 0) {
            below
        } else {
            below + 1
        }
    };
    if code == 0 {
        sign // keep -0.0
    } else {
        code | sign
    }
}

/// Decode `bytes` of `dtype` into f32 values. Integer types convert by value.
/// Callers check that `bytes.len()` is a multiple of the element size (the checkpoint does).
pub fn decode_f32(dtype: DType, bytes: &[u8]) -> Vec<f32> {
    match dtype {
        DType::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        DType::BF16 => bytes
            .chunks_exact(2)
            .map(|c| bf16_to_f32(u16::from_le_bytes([c[0], c[1]])))
            .collect(),
        DType::F16 => bytes
            .chunks_exact(2)
            .map(|c| half::f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())
            .collect(),
        DType::F8E4M3 => {
            let t = fp8_table();
            bytes.iter().map(|&b| t[b as usize]).collect()
        }
        DType::I32 => bytes
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f32)
            .collect(),
        DType::I64 => bytes
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8])) as f32)
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fp8_known_values() {
        assert_eq!(fp8_e4m3_to_f32(0x00), 0.0);
        assert_eq!(fp8_e4m3_to_f32(0x38), 1.0);
        assert_eq!(fp8_e4m3_to_f32(0x7e), 448.0);
        assert_eq!(fp8_e4m3_to_f32(0xfe), -448.0);
        assert_eq!(fp8_e4m3_to_f32(0x01), 2f32.powi(-9));
        assert!(fp8_e4m3_to_f32(0x7f).is_nan());
    }

    #[test]
    fn fp8_roundtrip_all_codes() {
        for code in 0u8..=255 {
            let v = fp8_e4m3_to_f32(code);
            if v.is_nan() {
                continue;
            }
            let back = f32_to_fp8_e4m3(v);
            assert_eq!(fp8_e4m3_to_f32(back), v, "code {code:#x}");
        }
        assert_eq!(f32_to_fp8_e4m3(1e6), 0x7e);
        assert_eq!(f32_to_fp8_e4m3(-1e6), 0xfe);
    }

    #[test]
    fn fp8_rounds_to_nearest() {
        // Between 1.0 (0x38) and 1.125 (0x39): 1.05 -> 1.0, 1.07 -> 1.125, 1.0625 tie -> even 0x38.
        assert_eq!(f32_to_fp8_e4m3(1.05), 0x38);
        assert_eq!(f32_to_fp8_e4m3(1.07), 0x39);
        assert_eq!(f32_to_fp8_e4m3(1.0625), 0x38);
    }

    #[test]
    fn bf16_rounding() {
        assert_eq!(bf16_to_f32(f32_to_bf16(1.0)), 1.0);
        let x = 1.0 + 2f32.powi(-9); // below half-ulp of bf16 (2^-8) -> rounds down
        assert_eq!(bf16_to_f32(f32_to_bf16(x)), 1.0);
    }
}
