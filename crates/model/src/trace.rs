//! Named intermediates (`layers.3.self_attn.indexer.topk`) recorded during a forward pass, so
//! a mismatch against the reference can be localised. Index tensors are stored as f32 values.

use std::collections::BTreeMap;

#[derive(Clone, Debug, Default)]
pub struct Trace {
    pub tensors: BTreeMap<String, (Vec<usize>, Vec<f32>)>,
}

impl Trace {
    pub fn record(&mut self, name: String, shape: Vec<usize>, data: Vec<f32>) {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len(), "trace {name}");
        self.tensors.insert(name, (shape, data));
    }

    pub fn get(&self, name: &str) -> Option<&(Vec<usize>, Vec<f32>)> {
        self.tensors.get(name)
    }
}
