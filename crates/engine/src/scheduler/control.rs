//! Control messages, run on the engine thread between two steps: what an RL trainer (slime,
//! through SGLang's control endpoints) does around a weight update.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::step::Scheduler;
use crate::batch::BatchModel;
use crate::generate::FinishReason;

/// Loads new weights for `Control::Reload`: given the path and the model being served (to
/// check that the new one has its architecture), the new model or why not.
pub type WeightLoader<M> = Box<dyn FnMut(&Path, &M) -> std::result::Result<M, String> + Send>;

/// What happens to the requests in flight when generation pauses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PauseMode {
    /// They finish at once as aborted, with what they generated so far.
    Abort,
    /// They go back to the queue without their caches (recomputed on continue).
    Retract,
    /// They stay as they are, caches included, and go on at continue.
    InPlace,
}

#[derive(Debug, Clone)]
pub enum Control {
    /// Finish the request with this id (`None`: every request) as aborted.
    Abort {
        id: Option<String>,
    },
    /// Stop stepping; new requests wait in the queue.
    Pause(PauseMode),
    Continue,
    /// Forget the prefix cache (RAM and disk).
    FlushCache,
    /// Load the weights at `path` and serve them from the next step on; the prefix cache is
    /// dropped. Requests in flight keep their caches. A failed load keeps the old weights.
    Reload {
        path: PathBuf,
        version: Option<String>,
    },
}

impl<M: BatchModel> Scheduler<M> {
    pub(super) fn control(&mut self, c: Control) -> std::result::Result<usize, String> {
        let n = match c {
            Control::Abort { id } => self.abort(id.as_deref()),
            Control::Pause(mode) => {
                let n = match mode {
                    PauseMode::Abort => self.abort(None),
                    PauseMode::Retract => self.retract_all(),
                    PauseMode::InPlace => self.running.len() + self.waiting.len(),
                };
                self.set_paused(true);
                n
            }
            Control::Continue => {
                self.set_paused(false);
                0
            }
            Control::FlushCache => {
                self.prefix.clear();
                if let Some(d) = self.disk.as_mut() {
                    d.clear();
                }
                0
            }
            Control::Reload { path, version } => self.reload(&path, version)?,
        };
        self.metrics
            .set_gauges(self.waiting.len(), self.running.len());
        Ok(n)
    }

    fn set_paused(&mut self, paused: bool) {
        self.paused = paused;
        self.shared.paused.store(paused, Ordering::SeqCst);
    }

    /// Finish the requests named `id` (all when `None`), running or waiting, as aborted.
    fn abort(&mut self, id: Option<&str>) -> usize {
        let hit = |req: &super::Request| id.is_none_or(|id| req.id.as_deref() == Some(id));
        let mut n = 0;
        let mut i = 0;
        while i < self.running.len() {
            if hit(&self.running[i].req) {
                let s = self.running.remove(i);
                self.finish(s, FinishReason::Aborted);
                n += 1;
            } else {
                i += 1;
            }
        }
        let (gone, keep): (Vec<_>, Vec<_>) = self.waiting.drain(..).partition(|s| hit(&s.req));
        self.waiting = keep.into();
        self.queued.fetch_sub(gone.len(), Ordering::SeqCst);
        for s in gone {
            self.finish(s, FinishReason::Aborted);
            n += 1;
        }
        n
    }

    /// Send every running sequence back to the front of the queue without its cache.
    fn retract_all(&mut self) -> usize {
        let n = self.running.len();
        while let Some(mut s) = self.running.pop() {
            s.cache = None;
            s.drafts.clear();
            self.queued.fetch_add(1, Ordering::SeqCst);
            self.waiting.push_front(s);
        }
        n
    }

    fn reload(
        &mut self,
        path: &Path,
        version: Option<String>,
    ) -> std::result::Result<usize, String> {
        let Some(load) = self.loader.as_mut() else {
            return Err("this server does not load weights (glm5 serve --weights-dir)".into());
        };
        let model = load(path, &self.model)?;
        // The old weights go as soon as the last step that used them is done (now).
        self.model = Arc::new(model);
        self.prefix.clear();
        if self.disk.take().is_some() {
            eprintln!(
                "glm5: new weights from {}: the prefix cache on disk (keyed by the startup model) is off from now on",
                path.display()
            );
        }
        if let Some(v) = version {
            *self
                .shared
                .weight_version
                .write()
                .unwrap_or_else(|e| e.into_inner()) = v;
        }
        Ok(self.running.len() + self.waiting.len())
    }
}
