//! The kNN-LM: a causal LM, a datastore and the mixing parameters. Scoring runs the model over
//! chunks of windows while another thread searches the previous chunk's keys (bounded channel).

use super::chunks::{plan_chunks, score_chunk, PassOptions, ScoredChunk};
use super::datastore::Datastore;
use super::sweep::NeighbourCache;
use crate::error::{KnnError, Result};
use crate::mixture::{knn_distribution, mix_into_log_probs};
use candle_core::{DType, Tensor, D};
use ralm_index::SearchParams;
use ralm_models::bpe::LmTokenizer;
use ralm_models::llama::{ForwardOptions, KeyKind, LlamaModel, Sampler, ScoreOptions};
use std::sync::mpsc;
use std::time::Instant;

/// Mixing and search parameters.
#[derive(Debug, Clone)]
pub struct KnnParams {
    /// Neighbours retrieved per position.
    pub k: usize,
    /// Weight of p_kNN.
    pub lambda: f32,
    /// Softmax temperature over neighbour scores.
    pub temperature: f32,
    /// Approximate-search knobs (nprobe, re-ranking).
    pub search: SearchParams,
}

impl Default for KnnParams {
    fn default() -> Self {
        Self {
            k: 32,
            lambda: 0.25,
            temperature: 1.0,
            search: SearchParams::default(),
        }
    }
}

/// How a text is run through the model for scoring.
#[derive(Debug, Clone, Copy)]
pub struct ScoringOptions {
    /// Longest window.
    pub context_len: usize,
    /// Distance between window starts.
    pub stride: usize,
    /// Windows per forward pass.
    pub batch: usize,
    /// Targets per pipelined chunk (one search call each).
    pub chunk_tokens: usize,
}

/// Result of scoring a token sequence: per-position neighbours and LM log-probabilities.
#[derive(Debug, Clone)]
pub struct Scored {
    /// Cached neighbours, targets and log p_LM for every predicted token.
    pub cache: NeighbourCache,
    /// Query keys (`positions × dim`) when asked to keep them.
    pub keys: Vec<f32>,
    /// Seconds the whole pass took.
    pub seconds: f64,
}

/// A language model mixed with nearest neighbours from a datastore.
pub struct KnnLm {
    /// The causal LM.
    pub lm: LlamaModel,
    /// Its tokenizer.
    pub tokenizer: LmTokenizer,
    /// The datastore searched at every position.
    pub datastore: Datastore,
    /// Mixing and search parameters.
    pub params: KnnParams,
}

/// Runs the model over `ids` chunk by chunk; `on_chunk` is called on another thread with each
/// finished chunk while the model works on the next one (at most `depth` chunks queued).
fn pipelined(
    lm: &LlamaModel,
    ids: &[u32],
    pass: &PassOptions,
    chunk_tokens: usize,
    mut on_chunk: impl FnMut(ScoredChunk) -> Result<()> + Send,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<()> {
    let chunks = plan_chunks(ids.len(), pass.context_len, pass.stride, chunk_tokens)?;
    let total = ids.len().saturating_sub(1);
    let (tx, rx) = mpsc::sync_channel::<ScoredChunk>(2);
    std::thread::scope(|s| {
        let consumer = s.spawn(move || -> Result<()> {
            for c in rx {
                on_chunk(c)?;
            }
            Ok(())
        });
        let mut produced = Ok(());
        let mut done = 0;
        for &c in &chunks {
            match score_chunk(lm, ids, c, pass) {
                Ok(sc) => {
                    done += c.targets();
                    // A closed channel means the consumer failed; its error is reported below.
                    if tx.send(sc).is_err() {
                        break;
                    }
                    progress(done, total);
                }
                Err(e) => {
                    produced = Err(e);
                    break;
                }
            }
        }
        drop(tx);
        let consumed = consumer
            .join()
            .unwrap_or_else(|_| Err(KnnError::Invalid("search thread panicked".into())));
        produced.and(consumed)
    })
}

impl KnnLm {
    /// Scoring options matching the datastore's pass, with the given batch and chunk size.
    pub fn default_scoring(&self, batch: usize, chunk_tokens: usize) -> ScoringOptions {
        let m = self.datastore.manifest();
        ScoringOptions {
            context_len: m.context_len,
            stride: m.stride,
            batch,
            chunk_tokens,
        }
    }

    fn pass(&self, opts: &ScoringOptions) -> Result<PassOptions> {
        Ok(PassOptions {
            context_len: opts.context_len,
            stride: opts.stride,
            batch: opts.batch,
            key: self.datastore.key_kind()?,
        })
    }

    /// Scores `ids`: the model runs chunk by chunk while a second thread searches the keys of
    /// the previous chunk, so search overlaps the forward passes.
    pub fn score_ids(
        &self,
        ids: &[u32],
        opts: &ScoringOptions,
        keep_keys: bool,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Scored> {
        let start = Instant::now();
        let p = &self.params;
        let mut cache = NeighbourCache::new(p.k);
        let mut keys = Vec::new();
        let pass = self.pass(opts)?;
        let on_chunk = |c: ScoredChunk| -> Result<()> {
            let nb = self.datastore.search(&c.keys, p.k, &p.search)?;
            let targets = &ids[c.chunk.first_target..c.chunk.end];
            for (i, (&t, &lp)) in targets.iter().zip(&c.log_probs).enumerate() {
                let (s, tk) = nb.row(i);
                cache.push(s, tk, t, lp);
            }
            if keep_keys {
                keys.extend_from_slice(&c.keys);
            }
            Ok(())
        };
        pipelined(&self.lm, ids, &pass, opts.chunk_tokens, on_chunk, progress)?;
        Ok(Scored {
            cache,
            keys,
            seconds: start.elapsed().as_secs_f64(),
        })
    }

    /// Scores several short texts together: their windows share forward passes and all their
    /// positions one search call (the cross-request batch of a server). Each result equals
    /// [`score_ids`](Self::score_ids) of that text when it fits one chunk.
    pub fn score_many(&self, texts: &[&[u32]], opts: &ScoringOptions) -> Result<Vec<Scored>> {
        let start = Instant::now();
        let p = &self.params;
        let pass = self.pass(opts)?;
        let scored = self.lm.score_texts(
            texts,
            &ScoreOptions {
                context_len: pass.context_len,
                stride: pass.stride,
                batch: pass.batch,
                keys: Some(pass.key),
            },
        )?;
        let mut keys = Vec::new();
        for s in &scored {
            if let Some(k) = &s.keys {
                keys.extend(k.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?);
            }
        }
        if keys.is_empty() {
            return Err(KnnError::Invalid(
                "nothing to score: every text is shorter than two tokens".into(),
            ));
        }
        let nb = self.datastore.search(&keys, p.k, &p.search)?;
        let seconds = start.elapsed().as_secs_f64();
        let mut row = 0;
        Ok(texts
            .iter()
            .zip(scored)
            .map(|(ids, s)| {
                let mut cache = NeighbourCache::new(p.k);
                for (&t, &nll) in ids.iter().skip(1).zip(&s.nll) {
                    let (sc, tk) = nb.row(row);
                    cache.push(sc, tk, t, -nll);
                    row += 1;
                }
                Scored {
                    cache,
                    keys: Vec::new(),
                    seconds,
                }
            })
            .collect())
    }

    /// Times the base LM alone over `ids` with the same chunking (no search); returns seconds
    /// and the per-position log p_LM.
    pub fn score_base(
        &self,
        ids: &[u32],
        opts: &ScoringOptions,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<(f64, Vec<f32>)> {
        let start = Instant::now();
        let mut lps = Vec::new();
        let pass = self.pass(opts)?;
        let chunks = plan_chunks(ids.len(), pass.context_len, pass.stride, opts.chunk_tokens)?;
        let total = ids.len().saturating_sub(1);
        for c in chunks {
            lps.extend(score_chunk(&self.lm, ids, c, &pass)?.log_probs);
            progress(lps.len(), total);
        }
        Ok((start.elapsed().as_secs_f64(), lps))
    }

    /// Per-token log-probabilities of `text` under the kNN-LM (token `i + 1` given `..=i`),
    /// with the datastore's window and stride.
    pub fn score_text(&self, text: &str) -> Result<Vec<f32>> {
        let ids = self.tokenizer.encode(text)?;
        let opts = self.default_scoring(8, 1024);
        let scored = self.score_ids(&ids, &opts, false, &mut |_, _| {})?;
        let p = &self.params;
        Ok((0..scored.cache.len())
            .map(|i| scored.cache.log_prob(i, p.lambda, p.temperature))
            .collect())
    }

    /// Search key of the last position of a forward pass.
    fn last_key(
        &self,
        ids: &Tensor,
        pos: usize,
        cache: Option<&mut ralm_models::llama::KvCache>,
    ) -> Result<(Tensor, Tensor)> {
        let kind = self.datastore.key_kind()?;
        let opts = ForwardOptions {
            capture_ffn_input: kind == KeyKind::FfnInput,
            left_padding: Vec::new(),
        };
        let out = self.lm.forward_with(ids, pos, cache, &opts)?;
        let t = ids.dim(1)?;
        let hidden = out.hidden.get(0)?.get(t - 1)?;
        let key = match (kind, &out.ffn_input) {
            (KeyKind::FfnInput, Some(f)) => f.get(0)?.get(t - 1)?,
            _ => hidden.clone(),
        };
        Ok((hidden, key))
    }

    /// Log-probabilities over the vocabulary from a final hidden state and a key, mixed with
    /// weight `lambda` on p_kNN.
    fn mixed_log_probs(&self, hidden: &Tensor, key: &Tensor, lambda: f32) -> Result<Vec<f32>> {
        let logits = self.lm.logits(&hidden.unsqueeze(0)?)?.squeeze(0)?;
        let max = logits.max_keepdim(D::Minus1)?;
        let shifted = logits.broadcast_sub(&max)?;
        let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
        let mut lp = shifted.broadcast_sub(&lse)?.to_vec1::<f32>()?;
        let p = &self.params;
        let q = key.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>()?;
        let nb = self.datastore.search(&q, p.k, &p.search)?;
        let knn = knn_distribution(&nb.scores, &nb.tokens, p.temperature);
        mix_into_log_probs(&mut lp, &knn, lambda);
        Ok(lp)
    }

    /// log p(next token) over the whole vocabulary after `context` ids, under the kNN-LM.
    pub fn next_token_distribution(&self, context: &[u32]) -> Result<Vec<f32>> {
        if context.is_empty() {
            return Err(KnnError::Invalid(
                "the context must hold at least one token".into(),
            ));
        }
        let ids = Tensor::new(context, self.lm.device())?.unsqueeze(0)?;
        let (hidden, key) = self.last_key(&ids, 0, None)?;
        self.mixed_log_probs(&hidden, &key, self.params.lambda)
    }

    /// Continues `prompt` ids by up to `max_new` tokens drawn from the kNN-LM distribution
    /// (KV cache: the prompt runs once, then one token per step); stops after `stop`.
    pub fn generate(
        &self,
        prompt: &[u32],
        max_new: usize,
        sampler: &mut Sampler,
        stop: Option<u32>,
    ) -> Result<Vec<u32>> {
        let mut out = Vec::with_capacity(max_new);
        self.generate_with(
            prompt,
            max_new,
            self.params.lambda,
            sampler,
            stop,
            &mut |t| {
                out.push(t);
                true
            },
        )?;
        Ok(out)
    }

    /// [`generate`](Self::generate) with weight `lambda` on p_kNN, handing each token to `emit`
    /// as soon as it is drawn; stops after `stop` or when `emit` returns false.
    pub fn generate_with(
        &self,
        prompt: &[u32],
        max_new: usize,
        lambda: f32,
        sampler: &mut Sampler,
        stop: Option<u32>,
        emit: &mut dyn FnMut(u32) -> bool,
    ) -> Result<()> {
        if prompt.is_empty() {
            return Err(KnnError::Invalid(
                "generation needs a non-empty prompt".into(),
            ));
        }
        let mut cache = self.lm.new_cache();
        let mut input = prompt.to_vec();
        let mut pos = 0;
        for _ in 0..max_new {
            let ids = Tensor::new(input.as_slice(), self.lm.device())?.unsqueeze(0)?;
            let (hidden, key) = self.last_key(&ids, pos, Some(&mut cache))?;
            pos += input.len();
            let lp = self.mixed_log_probs(&hidden, &key, lambda)?;
            let n = lp.len();
            let next = sampler.sample(&Tensor::from_vec(lp, n, self.lm.device())?)?;
            if !emit(next) || Some(next) == stop {
                break;
            }
            input = vec![next];
        }
        Ok(())
    }
}
