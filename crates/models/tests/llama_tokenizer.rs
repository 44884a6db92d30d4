//! The byte-level BPE built from SmolLM2's GGUF metadata: round trips, special tokens, and the
//! `tokenizer.json` path.

mod llama_common;

use ralm_models::bpe::LmTokenizer;
use ralm_models::gguf::GgufFile;

#[test]
fn gguf_tokenizer_round_trips_and_specials() {
    let Some(path) = llama_common::smollm2_gguf() else {
        return;
    };
    let tok = LmTokenizer::from_gguf(&GgufFile::open(&path).unwrap()).unwrap();
    assert_eq!(tok.vocab_size(), 49_152);
    assert_eq!((tok.bos_id(), tok.eos_id()), (Some(1), Some(2)));
    let texts = [
        "The capital of France is Paris.",
        "naïve café, Zürich – Ελληνικά, 日本語のテキスト, русский",
        "emoji: 🦀🚀👩‍👩‍👧 done",
        "  leading spaces,\ttabs\t\tand\n\n\nnewlines   \n  trailing  ",
        "",
        "<|im_start|>user\nhi<|im_end|>",
    ];
    for text in texts {
        let ids = tok.encode(text).unwrap();
        assert_eq!(tok.decode(&ids).unwrap(), text, "ids {ids:?}");
    }
    // No BOS is added, and control tokens in the text map to their single ids.
    let ids = tok.encode("<|im_start|>user").unwrap();
    assert_eq!(ids[0], 1);
    assert_eq!(tok.id_to_token(1).as_deref(), Some("<|im_start|>"));
    assert_eq!(tok.token_to_id("<|endoftext|>"), Some(0));
    assert_ne!(tok.encode("Hello").unwrap().first(), Some(&1));

    // The same tokenizer saved as tokenizer.json next to a model is preferred, and identical.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tokenizer.json"), tok.to_json().unwrap()).unwrap();
    let json_tok = LmTokenizer::for_model(&dir.path().join("model.gguf")).unwrap();
    for text in texts {
        assert_eq!(json_tok.encode(text).unwrap(), tok.encode(text).unwrap());
    }
    assert_eq!(
        json_tok.tokenizer_hash().unwrap(),
        tok.tokenizer_hash().unwrap()
    );
    let again = LmTokenizer::for_model(&path).unwrap();
    assert_eq!(
        again.tokenizer_hash().unwrap(),
        tok.tokenizer_hash().unwrap()
    );
}
