//! The generative reader: a small instruction-tuned causal LM (SmolLM2) reads one passage and
//! the question, greedily writes a short answer, and scores any answer's sequence probability.

use std::path::Path;
use std::sync::LazyLock;

use candle_core::{Device, Tensor, D};
use ralm_models::bpe::LmTokenizer;
use ralm_models::gguf::GgufFile;
use ralm_models::llama::{KvCache, LlamaModel, WeightMode};
use regex::Regex;

use crate::error::{RealmError, Result};
use crate::passages::Passage;

/// Most tokens of a generated answer.
pub const MAX_ANSWER_TOKENS: usize = 24;

/// Instruction given to chat models.
const SYSTEM: &str = "Answer the question using the context. Reply with only the short answer \
(a name, date, number or a few words), not a sentence.";

/// Worked examples shown before the real question (context, question, answer): a 135M-parameter
/// model follows "reply with only the short answer" far more reliably after seeing it done.
const EXAMPLES: [(&str, &str, &str); 2] = [
    (
        "Mount Kilimanjaro: Mount Kilimanjaro is a dormant volcano in Tanzania. Its highest \
         peak, Uhuru, rises 5,895 metres above sea level, the highest point in Africa.",
        "How high is Mount Kilimanjaro?",
        "5,895 metres",
    ),
    (
        "Penicillin: Penicillin was discovered in 1928 by the Scottish physician Alexander \
         Fleming, who noticed that a mould killed the bacteria around it.",
        "Who discovered penicillin?",
        "Alexander Fleming",
    ),
];

/// How the prompt is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PromptTemplate {
    /// `<|im_start|>role\n...<|im_end|>` turns (the GGUF's chat template uses them).
    ChatMl,
    /// `Context: … Question: … Answer:`.
    Plain,
}

/// A prompt that has been run through the model: the state to continue from.
pub struct Primed {
    cache: KvCache,
    /// Hidden state `[1, d]` of the prompt's last token.
    last_hidden: Tensor,
    /// Prompt length in tokens.
    len: usize,
}

/// A causal LM used as a reader.
pub struct GenerativeReader {
    model: LlamaModel,
    tokenizer: LmTokenizer,
    template: PromptTemplate,
    stop_ids: Vec<u32>,
}

/// An answer ends at a line break or at a period followed by a space (or the end of output).
static ANSWER_END: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\n|\.(\s|$)").expect("static regex"));

/// Cuts generated text at its first line break or sentence-ending period and trims it.
pub fn cut_answer(text: &str) -> &str {
    let end = ANSWER_END.find(text).map_or(text.len(), |m| m.start());
    text[..end].trim()
}

impl GenerativeReader {
    /// Loads a GGUF model (dequantized to f32: on CPUs candle's quantized matmuls are about 5×
    /// slower for this small model) and its tokenizer; picks the ChatML template when
    /// the GGUF's `tokenizer.chat_template` uses `<|im_start|>`, else the plain prompt.
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        let gguf = GgufFile::open(path)?;
        let chat = gguf
            .string("tokenizer.chat_template")
            .map(|t| t.contains("<|im_start|>"))
            .unwrap_or(false);
        let model = LlamaModel::load(path, WeightMode::F32, device)?;
        let tokenizer = LmTokenizer::for_model(path)?;
        let template = if chat && tokenizer.token_to_id("<|im_start|>").is_some() {
            PromptTemplate::ChatMl
        } else {
            PromptTemplate::Plain
        };
        let stop_ids = ["<|im_end|>", "<|endoftext|>"]
            .iter()
            .filter_map(|t| tokenizer.token_to_id(t))
            .chain(tokenizer.eos_id())
            .collect();
        Ok(Self {
            model,
            tokenizer,
            template,
            stop_ids,
        })
    }

    /// The prompt layout in use.
    pub fn template(&self) -> PromptTemplate {
        self.template
    }

    /// The prompt text for `question` over `passage`, after the worked examples.
    pub fn prompt(&self, question: &str, passage: &Passage) -> String {
        let context = format!("{}: {}", passage.title, passage.text);
        let turn = |context: &str, question: &str| {
            match self.template {
            PromptTemplate::ChatMl => format!(
                "<|im_start|>user\nContext: {context}\n\nQuestion: {question}<|im_end|>\n<|im_start|>assistant\n"
            ),
            PromptTemplate::Plain => format!("Context: {context}\n\nQuestion: {question}\nAnswer:"),
        }
        };
        let mut prompt = match self.template {
            PromptTemplate::ChatMl => format!("<|im_start|>system\n{SYSTEM}<|im_end|>\n"),
            PromptTemplate::Plain => String::new(),
        };
        for (c, q, a) in EXAMPLES {
            prompt += &turn(c, q);
            prompt += match self.template {
                PromptTemplate::ChatMl => format!("{a}<|im_end|>\n"),
                PromptTemplate::Plain => format!(" {a}\n\n"),
            }
            .as_str();
        }
        prompt + &turn(&context, question)
    }

    /// Runs the prompt for `question` over `passage`.
    pub fn prime(&self, question: &str, passage: &Passage) -> Result<Primed> {
        let ids = self.tokenizer.encode(&self.prompt(question, passage))?;
        let limit = self.model.config().max_position_embeddings;
        if ids.is_empty() || ids.len() + MAX_ANSWER_TOKENS > limit {
            return Err(RealmError::Invalid(format!(
                "passage {}: prompt of {} tokens does not fit the reader's {limit} positions",
                passage.id,
                ids.len()
            )));
        }
        let mut cache = self.model.new_cache();
        let input = Tensor::new(ids.as_slice(), self.model.device())?.unsqueeze(0)?;
        let hidden = self.model.forward(&input, 0, Some(&mut cache))?.hidden;
        let last_hidden = hidden.get(0)?.narrow(0, ids.len() - 1, 1)?;
        Ok(Primed {
            cache,
            last_hidden,
            len: ids.len(),
        })
    }

    /// Greedy answer after `primed`: at most [`MAX_ANSWER_TOKENS`] tokens, cut at a line break
    /// or sentence end.
    pub fn generate(&self, primed: &Primed) -> Result<String> {
        let mut cache = primed.cache.clone();
        let mut hidden = primed.last_hidden.clone();
        let mut out = Vec::new();
        let mut text = String::new();
        while out.len() < MAX_ANSWER_TOKENS {
            let next = self
                .model
                .logits(&hidden)?
                .argmax(D::Minus1)?
                .squeeze(0)?
                .to_scalar::<u32>()?;
            if self.stop_ids.contains(&next) {
                break;
            }
            out.push(next);
            text = self.tokenizer.decode(&out)?;
            if ANSWER_END.find(&text).is_some_and(|m| m.end() < text.len()) || text.contains('\n') {
                break;
            }
            let input = Tensor::new(&[next], self.model.device())?.unsqueeze(0)?;
            let h = self
                .model
                .forward(&input, primed.len + out.len() - 1, Some(&mut cache))?
                .hidden;
            hidden = h.get(0)?;
        }
        Ok(cut_answer(&text).to_string())
    }

    /// `log p(answer | prompt)`: the sum of the answer tokens' log-probabilities.
    pub fn score(&self, primed: &Primed, answer: &str) -> Result<f64> {
        let ids = self.tokenizer.encode(answer)?;
        if ids.is_empty() {
            return Err(RealmError::Invalid("cannot score an empty answer".into()));
        }
        let dev = self.model.device();
        let mut predictors = vec![primed.last_hidden.clone()];
        if ids.len() > 1 {
            let mut cache = primed.cache.clone();
            let input = Tensor::new(&ids[..ids.len() - 1], dev)?.unsqueeze(0)?;
            predictors.push(
                self.model
                    .forward(&input, primed.len, Some(&mut cache))?
                    .hidden
                    .get(0)?,
            );
        }
        let hidden = Tensor::cat(&predictors, 0)?;
        let targets = Tensor::new(ids.as_slice(), dev)?;
        let lp = self.model.next_token_logprobs(&hidden, &targets)?;
        Ok(lp.to_vec1::<f32>()?.iter().map(|&x| x as f64).sum())
    }
}

#[cfg(test)]
mod tests {
    use super::cut_answer;

    #[test]
    fn answers_are_cut_at_line_breaks_and_sentence_ends() {
        assert_eq!(cut_answer(" Paris.\nMore"), "Paris");
        assert_eq!(cut_answer("3.5 metres. It is"), "3.5 metres");
        assert_eq!(cut_answer("1889."), "1889");
        assert_eq!(cut_answer("Gustave Eiffel"), "Gustave Eiffel");
    }
}
