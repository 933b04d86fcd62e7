//! The built-in offline provider: deterministic feature hashing of words and word pairs. Not
//! semantic, but stable across releases and free; the default when nothing else is configured.

use async_trait::async_trait;

use super::{EmbedError, Embedder};

/// Deterministic bag-of-words embedder: lower-cased word unigrams and bigrams are hashed
/// (FNV-1a, fixed, so vectors never change between releases) into `dim` signed buckets and the
/// result is L2-normalised. Texts sharing words get a positive cosine similarity.
#[derive(Debug, Clone)]
pub struct LocalEmbedder {
    dim: usize,
    batch_size: usize,
}

impl LocalEmbedder {
    /// An embedder producing `dim`-long vectors.
    pub fn new(dim: usize, batch_size: usize) -> Self {
        LocalEmbedder {
            dim: dim.max(1),
            batch_size: batch_size.max(1),
        }
    }

    /// The vector of one text (all zeros for a text without words).
    pub fn embed_one(&self, text: &str) -> Vec<f32> {
        let mut v = vec![0f32; self.dim];
        let mut prev: Option<u64> = None;
        for word in text
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
        {
            let h = fnv1a(word.chars().flat_map(char::to_lowercase));
            self.add(&mut v, h, 1.0);
            if let Some(p) = prev {
                // Bigrams carry some word order; weighted lower than the words themselves.
                self.add(&mut v, p.rotate_left(17) ^ h, 0.5);
            }
            prev = Some(h);
        }
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        if norm > 0.0 {
            v.iter_mut().for_each(|x| *x /= norm);
        }
        v
    }

    fn add(&self, v: &mut [f32], h: u64, w: f32) {
        let idx = (h % self.dim as u64) as usize;
        let sign = if (h >> 63) == 0 { 1.0 } else { -1.0 };
        v[idx] += sign * w;
    }
}

fn fnv1a(chars: impl Iterator<Item = char>) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for c in chars {
        let mut buf = [0u8; 4];
        for b in c.encode_utf8(&mut buf).bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

#[async_trait]
impl Embedder for LocalEmbedder {
    fn model_id(&self) -> String {
        format!("local-fnv-v1/{}", self.dim)
    }

    fn batch_size(&self) -> usize {
        self.batch_size
    }

    fn dimensions(&self) -> Option<usize> {
        Some(self.dim)
    }

    async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
        Ok(texts.iter().map(|t| self.embed_one(t)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_is_deterministic_normalised_and_similar_for_similar_text() {
        let e = LocalEmbedder::new(128, 8);
        let a = e.embed_one("The quick brown fox jumps over the lazy dog");
        let b = e.embed_one("the QUICK brown fox jumps over the lazy dog!");
        let c = e.embed_one("Quarterly revenue grew in every region");
        assert_eq!(a.len(), 128);
        assert_eq!(a, b);
        let norm: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5);
        let dot = |x: &[f32], y: &[f32]| x.iter().zip(y).map(|(p, q)| p * q).sum::<f32>();
        let near = e.embed_one("a quick brown fox");
        assert!(dot(&a, &near) > dot(&a, &c));
        assert!(e.embed_one("  ,. ").iter().all(|x| *x == 0.0));
    }
}
