//! The two prompt tokenizers of FLUX, built from bytes (no file paths, so they also run in a browser):
//! CLIP-L's byte-level BPE (77 ids) and T5 v1.1's SentencePiece Unigram (512 ids).
//!
//! Both produce exactly what diffusers' `FluxKontextPipeline` feeds its encoders: `padding="max_length"`,
//! `truncation=True`, the special tokens of each model, and the model's own pad id.

use std::collections::HashMap;

use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::models::unigram::Unigram;
use tokenizers::normalizers::{Lowercase, NFC, Precompiled, Replace, Sequence as NormalizerSequence};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::pre_tokenizers::sequence::Sequence as PreTokenizerSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::whitespace::WhitespaceSplit;
use tokenizers::{AddedToken, NormalizerWrapper, PreTokenizerWrapper, SplitDelimiterBehavior, Tokenizer};

use crate::{Error, Result};

/// CLIP's start-of-text token.
pub const CLIP_BOS: &str = "<|startoftext|>";
/// CLIP's end-of-text token; FLUX also pads with it.
pub const CLIP_EOS: &str = "<|endoftext|>";
/// The CLIP text encoder's context length.
pub const CLIP_MAX_LEN: usize = 77;
/// The T5 sequence length diffusers' Flux pipelines use by default (`max_sequence_length`).
pub const T5_MAX_LEN: usize = 512;

/// The pre-tokenizer regex of OpenAI CLIP (`simple_tokenizer.py`) as transformers' `CLIPTokenizer` writes it.
const CLIP_SPLIT_REGEX: &str =
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";
/// SentencePiece's whitespace marker (U+2581).
const SPIECE_SPACE: char = '▁';
/// Sentinel tokens transformers' `T5Tokenizer` appends after the SentencePiece vocabulary (`extra_ids`).
const T5_EXTRA_IDS: usize = 100;

fn tokenizer_error(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Invalid(format!("{what}: {e}"))
}

/// Looks up a token that the tokenizer cannot work without.
fn required_id(tokenizer: &Tokenizer, token: &str, source: &str) -> Result<u32> {
    tokenizer.token_to_id(token).ok_or_else(|| Error::Invalid(format!("{source} has no `{token}` token")))
}

/// A `tokenizer.json` without its own truncation and padding settings ([`frame`] applies the pipeline's).
fn read_tokenizer_json(bytes: &[u8]) -> tokenizers::Result<Tokenizer> {
    check_precompiled_normalizers(&serde_json::from_slice(bytes)?)?;
    let mut tokenizer = Tokenizer::from_bytes(bytes)?;
    tokenizer.with_truncation(None)?.with_padding(None);
    Ok(tokenizer)
}

/// Checks every `Precompiled` normalizer of a `tokenizer.json` the way the tokenizers crate will read it: that
/// crate panics (instead of failing) on a malformed `precompiled_charsmap`, which would kill the worker.
fn check_precompiled_normalizers(value: &serde_json::Value) -> tokenizers::Result<()> {
    match value {
        serde_json::Value::Object(object) => {
            if object.get("type").and_then(|t| t.as_str()) == Some("Precompiled") {
                serde_json::from_str::<Precompiled>(&value.to_string())
                    .map_err(|e| format!("its Precompiled normalizer is invalid: {e}"))?;
                let charsmap = object.get("precompiled_charsmap").and_then(|c| c.as_str()).unwrap_or_default();
                let charsmap = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, charsmap)
                    .map_err(|e| format!("its precompiled_charsmap is not base64: {e}"))?;
                check_charsmap(&charsmap).map_err(|e| e.to_string())?;
            }
            object.values().try_for_each(check_precompiled_normalizers)
        }
        serde_json::Value::Array(items) => items.iter().try_for_each(check_precompiled_normalizers),
        _ => Ok(()),
    }
}

/// Checks a SentencePiece `precompiled_charsmap` (`[u32 trie bytes][trie: u32 units][normalized strings]`, the
/// trie a darts-clone double array) so normalizing any text stays inside it: every node a key can reach must
/// have all 255 children positions inside the array, and every leaf must point at a character boundary of the
/// strings. `spm_precompiled` indexes without checks and would panic on a crafted map.
pub(crate) fn check_charsmap(charsmap: &[u8]) -> Result<()> {
    let fail = |msg: &str| Error::Invalid(format!("the precompiled_charsmap is damaged: {msg}"));
    let (size, rest) = charsmap.split_first_chunk::<4>().ok_or_else(|| fail("it is shorter than its 4-byte header"))?;
    let trie_bytes = (u32::from_le_bytes(*size) / 4 * 4) as usize;
    if trie_bytes > rest.len() {
        return Err(fail("its trie is longer than the map"));
    }
    let units: Vec<usize> =
        rest[..trie_bytes].chunks_exact(4).map(|u| u32::from_le_bytes(u.try_into().unwrap()) as usize).collect();
    let normalized = std::str::from_utf8(&rest[trie_bytes..]).map_err(|_| fail("its strings are not UTF-8"))?;
    let offset = |unit: usize| (unit >> 10) << ((unit & (1 << 9)) >> 6);
    let root = units.first().ok_or_else(|| fail("its trie is empty"))?;
    let mut visited = std::collections::HashSet::new();
    let mut pending = vec![offset(*root)];
    while let Some(node) = pending.pop() {
        if !visited.insert(node) {
            continue;
        }
        for byte in 1..=255usize {
            let unit = *units.get(node ^ byte).ok_or_else(|| fail("a trie node points outside the trie"))?;
            if unit & ((1 << 31) | 0xFF) != byte {
                continue;
            }
            let child = node ^ byte ^ offset(unit);
            if (unit >> 8) & 1 == 1 {
                let leaf = *units.get(child).ok_or_else(|| fail("a trie leaf lies outside the trie"))?;
                let start = leaf & ((1 << 31) - 1);
                if !normalized.is_char_boundary(start) {
                    return Err(fail("a replacement starts outside its strings"));
                }
            }
            pending.push(child);
        }
    }
    Ok(())
}

/// Ids of `prompt` without any special token added around them.
fn encode_plain(tokenizer: &Tokenizer, prompt: &str) -> Result<Vec<u32>> {
    let encoding = tokenizer.encode(prompt, false).map_err(|e| tokenizer_error("tokenizing the prompt failed", e))?;
    Ok(encoding.get_ids().to_vec())
}

/// `prefix + ids + suffix`, `ids` truncated so the whole fits `max_len`, then padded with `pad` to `max_len`.
fn frame(prefix: &[u32], mut ids: Vec<u32>, suffix: &[u32], pad: u32, max_len: usize) -> Result<Vec<u32>> {
    let specials = prefix.len() + suffix.len();
    if max_len < specials {
        return Err(Error::Invalid(format!("a length of {max_len} cannot hold the {specials} special tokens")));
    }
    ids.truncate(max_len - specials);
    let mut framed = Vec::with_capacity(max_len);
    framed.extend_from_slice(prefix);
    framed.extend(ids);
    framed.extend_from_slice(suffix);
    framed.resize(max_len, pad);
    Ok(framed)
}

/// CLIP's byte-level BPE tokenizer, as transformers' `CLIPTokenizer(Fast)` builds it from `vocab.json` and
/// `merges.txt`: NFC, whitespace runs collapsed to one space, lower-casing, the CLIP split regex, GPT-2 byte
/// mapping, and `</w>` marking the end of each word.
#[derive(Debug, Clone)]
pub struct ClipTokenizer {
    tokenizer: Tokenizer,
    bos_id: u32,
    eos_id: u32,
    pad_id: u32,
}

impl ClipTokenizer {
    /// Builds the tokenizer from the contents of `tokenizer/vocab.json` and `tokenizer/merges.txt`.
    /// The bos/eos ids are looked up in the vocabulary; padding uses `<|endoftext|>`, as FLUX's tokenizer does.
    pub fn from_vocab_merges(vocab_json: &str, merges_txt: &str) -> Result<Self> {
        let vocab: HashMap<String, u32> = serde_json::from_str(vocab_json)
            .map_err(|e| Error::Invalid(format!("CLIP vocab.json is not a JSON object of token ids: {e}")))?;
        Self::from_parts(vocab, parse_merges(merges_txt)?)
    }

    /// CLIP-L's tokenizer (49408 tokens), built in: the one every FLUX checkpoint uses, for file sets without a
    /// `tokenizer/` folder (ComfyUI's `clip_l.safetensors` carries none). Its vocabulary follows from the merge
    /// rules as in CLIP's `SimpleTokenizer`: the 256 byte symbols, the same with `</w>`, one token per merge, then
    /// `<|startoftext|>` and `<|endoftext|>`.
    pub fn clip_l() -> Result<Self> {
        let merges = parse_merges(CLIP_L_MERGES)?;
        let bytes = byte_symbols();
        let tokens = bytes
            .iter()
            .map(char::to_string)
            .chain(bytes.iter().map(|c| format!("{c}</w>")))
            .chain(merges.iter().map(|(left, right)| format!("{left}{right}")))
            .chain([CLIP_BOS.to_string(), CLIP_EOS.to_string()]);
        let vocab = tokens.enumerate().map(|(id, token)| (token, id as u32)).collect();
        Self::from_parts(vocab, merges)
    }

    fn from_parts(vocab: HashMap<String, u32>, merges: Vec<(String, String)>) -> Result<Self> {
        let bpe = BPE::builder()
            .vocab_and_merges(vocab.into_iter().collect::<Vocab>(), merges)
            .continuing_subword_prefix(String::new())
            .end_of_word_suffix("</w>".to_string())
            .unk_token(CLIP_EOS.to_string())
            .fuse_unk(false)
            .build()
            .map_err(|e| tokenizer_error("CLIP vocab.json and merges.txt do not fit together", e))?;

        let mut tokenizer = Tokenizer::new(bpe);
        let whitespace = Replace::new(tokenizers::normalizers::replace::ReplacePattern::Regex(r"\s+".into()), " ")
            .map_err(|e| tokenizer_error("CLIP whitespace rule", e))?;
        let normalizers: Vec<NormalizerWrapper> = vec![NFC.into(), whitespace.into(), Lowercase.into()];
        tokenizer.with_normalizer(Some(NormalizerSequence::new(normalizers)));
        let split = Split::new(SplitPattern::Regex(CLIP_SPLIT_REGEX.into()), SplitDelimiterBehavior::Removed, true)
            .map_err(|e| tokenizer_error("CLIP split rule", e))?;
        let pre_tokenizers: Vec<PreTokenizerWrapper> = vec![split.into(), ByteLevel::new(false, true, true).into()];
        tokenizer.with_pre_tokenizer(Some(PreTokenizerSequence::new(pre_tokenizers)));
        tokenizer.add_special_tokens(&[
            AddedToken::from(CLIP_BOS, true).normalized(true),
            AddedToken::from(CLIP_EOS, true).normalized(true),
        ]);
        Self::with_tokenizer(tokenizer, "CLIP vocab.json")
    }

    /// Builds the tokenizer from a `tokenizer.json` (the serialized form of the same pipeline).
    pub fn from_tokenizer_json(bytes: &[u8]) -> Result<Self> {
        let tokenizer =
            read_tokenizer_json(bytes).map_err(|e| tokenizer_error("CLIP tokenizer.json could not be read", e))?;
        Self::with_tokenizer(tokenizer, "CLIP tokenizer.json")
    }

    fn with_tokenizer(tokenizer: Tokenizer, source: &str) -> Result<Self> {
        let bos_id = required_id(&tokenizer, CLIP_BOS, source)?;
        let eos_id = required_id(&tokenizer, CLIP_EOS, source)?;
        Ok(Self { tokenizer, bos_id, eos_id, pad_id: eos_id })
    }

    /// The start-of-text id (49406 in CLIP-L).
    pub fn bos_id(&self) -> u32 {
        self.bos_id
    }

    /// The end-of-text id (49407 in CLIP-L), the largest id, whose position gives the pooled output.
    pub fn eos_id(&self) -> u32 {
        self.eos_id
    }

    /// Exactly [`CLIP_MAX_LEN`] ids: bos, the prompt's tokens (truncated to fit), eos, then padding.
    pub fn encode(&self, prompt: &str) -> Result<Vec<u32>> {
        let ids = encode_plain(&self.tokenizer, prompt)?;
        frame(&[self.bos_id], ids, &[self.eos_id], self.pad_id, CLIP_MAX_LEN)
    }
}

/// CLIP-L's 48894 merge rules: OpenAI CLIP's `bpe_simple_vocab_16e6` (MIT licence), as open_clip ships it; the
/// same rules as `tokenizer/merges.txt` of every FLUX repository.
const CLIP_L_MERGES: &str = include_str!("clip_l_merges.txt");

/// GPT-2's printable stand-ins for the 256 bytes, in its order: the bytes that print as themselves (`!`..`~`,
/// `¡`..`¬`, `®`..`ÿ`), then every other byte as U+0100 onwards.
fn byte_symbols() -> Vec<char> {
    let mut bytes: Vec<u32> = (u32::from(b'!')..=u32::from(b'~')).chain(0xA1..=0xAC).chain(0xAE..=0xFF).collect();
    let mut symbols = bytes.clone();
    let mut stand_ins = 256..;
    for byte in 0..256 {
        if !bytes.contains(&byte) {
            bytes.push(byte);
            symbols.extend(stand_ins.next());
        }
    }
    symbols.into_iter().filter_map(char::from_u32).collect()
}

/// Merge rules from `merges.txt`: one `left right` pair a line, after an optional `#version` header.
fn parse_merges(merges_txt: &str) -> Result<Vec<(String, String)>> {
    merges_txt
        .lines()
        .enumerate()
        .filter(|(i, line)| !(line.trim().is_empty() || *i == 0 && line.starts_with("#version")))
        .map(|(i, line)| {
            let mut parts = line.split(' ');
            match (parts.next(), parts.next(), parts.next()) {
                (Some(left), Some(right), None) if !left.is_empty() && !right.is_empty() => {
                    Ok((left.to_string(), right.to_string()))
                }
                _ => {
                    Err(Error::Invalid(format!("CLIP merges.txt line {} is not a `left right` pair: {line:?}", i + 1)))
                }
            }
        })
        .collect()
}

/// The kind of a SentencePiece piece (`ModelProto.SentencePiece.Type`, also GGUF's `tokenizer.ggml.token_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PieceType {
    /// An ordinary piece the segmenter may choose.
    Normal,
    /// The unknown piece.
    Unknown,
    /// A control symbol (`<pad>`, `</s>`), never produced from text by the segmenter.
    Control,
    /// A piece always kept whole when it appears in the text.
    UserDefined,
    /// A reserved id with no use.
    Unused,
    /// A byte-fallback piece `<0xXX>`.
    Byte,
}

impl PieceType {
    /// The type from its protobuf / GGUF number (1 = normal … 6 = byte).
    pub fn from_code(code: i64) -> Result<Self> {
        Ok(match code {
            1 => Self::Normal,
            2 => Self::Unknown,
            3 => Self::Control,
            4 => Self::UserDefined,
            5 => Self::Unused,
            6 => Self::Byte,
            other => return Err(Error::Invalid(format!("unknown SentencePiece piece type {other}"))),
        })
    }
}

/// One entry of a SentencePiece vocabulary.
#[derive(Debug, Clone, PartialEq)]
pub struct Piece {
    /// The piece's text, with `▁` for spaces.
    pub piece: String,
    /// Its log-probability.
    pub score: f32,
    /// Its kind.
    pub kind: PieceType,
}

/// The parts of a SentencePiece `ModelProto` a Unigram tokenizer needs.
#[derive(Debug, Clone, PartialEq)]
pub struct SentencePieceModel {
    /// The vocabulary; a piece's index is its id.
    pub pieces: Vec<Piece>,
    /// `trainer_spec.unk_id`.
    pub unk_id: i32,
    /// `trainer_spec.eos_id` (-1 when absent).
    pub eos_id: i32,
    /// `trainer_spec.pad_id` (-1 when absent).
    pub pad_id: i32,
    /// `trainer_spec.byte_fallback`.
    pub byte_fallback: bool,
    /// `normalizer_spec.precompiled_charsmap` (empty for the identity normalizer).
    pub precompiled_charsmap: Vec<u8>,
    /// `normalizer_spec.add_dummy_prefix`: a space is put before the text.
    pub add_dummy_prefix: bool,
    /// `normalizer_spec.remove_extra_whitespaces`: leading, trailing and repeated spaces are dropped.
    pub remove_extra_whitespaces: bool,
}

impl SentencePieceModel {
    /// Parses a serialized `ModelProto` (the bytes of a `spiece.model`).
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        let mut model = Self {
            pieces: Vec::new(),
            unk_id: 0,
            eos_id: 2,
            pad_id: -1,
            byte_fallback: false,
            precompiled_charsmap: Vec::new(),
            add_dummy_prefix: true,
            remove_extra_whitespaces: true,
        };
        let mut reader = ProtoReader::new(bytes);
        while let Some((field, value)) = reader.next_field()? {
            match (field, value) {
                (1, ProtoValue::Bytes(piece)) => model.pieces.push(parse_piece(piece)?),
                (2, ProtoValue::Bytes(trainer)) => model.read_trainer_spec(trainer)?,
                (3, ProtoValue::Bytes(normalizer)) => model.read_normalizer_spec(normalizer)?,
                _ => {}
            }
        }
        if model.pieces.is_empty() {
            return Err(Error::Invalid("spiece.model holds no pieces".into()));
        }
        Ok(model)
    }

    fn read_trainer_spec(&mut self, bytes: &[u8]) -> Result<()> {
        let mut reader = ProtoReader::new(bytes);
        while let Some((field, value)) = reader.next_field()? {
            match (field, value) {
                (3, ProtoValue::Varint(kind)) if kind != 1 => {
                    return Err(Error::Invalid(format!(
                        "spiece.model is not a Unigram model (trainer_spec.model_type {kind}); T5 uses Unigram"
                    )));
                }
                (35, ProtoValue::Varint(v)) => self.byte_fallback = v != 0,
                (40, ProtoValue::Varint(v)) => self.unk_id = v as i32,
                (42, ProtoValue::Varint(v)) => self.eos_id = v as i32,
                (43, ProtoValue::Varint(v)) => self.pad_id = v as i32,
                _ => {}
            }
        }
        Ok(())
    }

    fn read_normalizer_spec(&mut self, bytes: &[u8]) -> Result<()> {
        let mut reader = ProtoReader::new(bytes);
        while let Some((field, value)) = reader.next_field()? {
            match (field, value) {
                (2, ProtoValue::Bytes(map)) => self.precompiled_charsmap = map.to_vec(),
                (3, ProtoValue::Varint(v)) => self.add_dummy_prefix = v != 0,
                (4, ProtoValue::Varint(v)) => self.remove_extra_whitespaces = v != 0,
                _ => {}
            }
        }
        Ok(())
    }
}

fn parse_piece(bytes: &[u8]) -> Result<Piece> {
    let mut piece = Piece { piece: String::new(), score: 0.0, kind: PieceType::Normal };
    let mut reader = ProtoReader::new(bytes);
    while let Some((field, value)) = reader.next_field()? {
        match (field, value) {
            (1, ProtoValue::Bytes(text)) => {
                piece.piece = String::from_utf8(text.to_vec())
                    .map_err(|_| Error::Invalid("spiece.model holds a piece that is not UTF-8".into()))?;
            }
            (2, ProtoValue::Fixed32(bits)) => piece.score = f32::from_bits(bits),
            (3, ProtoValue::Varint(code)) => piece.kind = PieceType::from_code(code as i64)?,
            _ => {}
        }
    }
    Ok(piece)
}

/// A value of the protobuf wire format.
enum ProtoValue<'a> {
    Varint(u64),
    Fixed64,
    Bytes(&'a [u8]),
    Fixed32(u32),
}

/// Reads the protobuf wire format field by field (only what `ModelProto` uses).
struct ProtoReader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> ProtoReader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, pos: 0 }
    }

    fn truncated() -> Error {
        Error::Invalid("spiece.model is truncated or not a SentencePiece model".into())
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&end| end <= self.bytes.len()).ok_or_else(Self::truncated)?;
        let taken = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(taken)
    }

    fn varint(&mut self) -> Result<u64> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.take(1)?[0];
            value |= u64::from(byte & 0x7f) << shift;
            if byte < 0x80 {
                return Ok(value);
            }
        }
        Err(Self::truncated())
    }

    fn next_field(&mut self) -> Result<Option<(u64, ProtoValue<'a>)>> {
        if self.pos == self.bytes.len() {
            return Ok(None);
        }
        let key = self.varint()?;
        let value = match key & 7 {
            0 => ProtoValue::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                ProtoValue::Fixed64
            }
            2 => {
                let len = usize::try_from(self.varint()?).map_err(|_| Self::truncated())?;
                ProtoValue::Bytes(self.take(len)?)
            }
            5 => ProtoValue::Fixed32(u32::from_le_bytes(self.take(4)?.try_into().map_err(|_| Self::truncated())?)),
            wire => {
                return Err(Error::Invalid(format!(
                    "spiece.model uses protobuf wire type {wire}, not a SentencePiece model"
                )));
            }
        };
        Ok(Some((key >> 3, value)))
    }
}

/// T5 v1.1's SentencePiece Unigram tokenizer, as transformers' `T5TokenizerFast` runs it: the precompiled
/// normalizer, whitespace split, `▁` prefix, Unigram segmentation, then `</s>`.
#[derive(Debug, Clone)]
pub struct T5Tokenizer {
    tokenizer: Tokenizer,
    eos_id: u32,
    pad_id: u32,
}

impl T5Tokenizer {
    /// Builds the tokenizer from `tokenizer_2/tokenizer.json`.
    pub fn from_tokenizer_json(bytes: &[u8]) -> Result<Self> {
        let tokenizer =
            read_tokenizer_json(bytes).map_err(|e| tokenizer_error("T5 tokenizer.json could not be read", e))?;
        let eos_id = required_id(&tokenizer, "</s>", "T5 tokenizer.json")?;
        let pad_id = required_id(&tokenizer, "<pad>", "T5 tokenizer.json")?;
        Ok(Self { tokenizer, eos_id, pad_id })
    }

    /// Builds the tokenizer from `tokenizer_2/spiece.model`, adding the 100 `<extra_id_N>` sentinels after
    /// the pieces as transformers' T5 converter does (`<extra_id_0>` gets the last id).
    pub fn from_spiece_model(bytes: &[u8]) -> Result<Self> {
        let model = SentencePieceModel::parse(bytes)?;
        let n = model.pieces.len();
        let id = |value: i32, what: &str| {
            usize::try_from(value)
                .ok()
                .filter(|&id| id < n)
                .ok_or_else(|| Error::Invalid(format!("spiece.model has no {what} piece (id {value})")))
        };
        let (unk_id, eos_id, pad_id) =
            (id(model.unk_id, "unknown")?, id(model.eos_id, "end-of-sequence")?, id(model.pad_id, "padding")?);
        let mut pieces = model.pieces;
        pieces.extend((0..T5_EXTRA_IDS).rev().map(|i| Piece {
            piece: format!("<extra_id_{i}>"),
            score: 0.0,
            kind: PieceType::Control,
        }));
        let spec = SpmSpec {
            unk_id,
            eos_id,
            pad_id,
            byte_fallback: model.byte_fallback,
            precompiled_charsmap: &model.precompiled_charsmap,
            add_dummy_prefix: model.add_dummy_prefix,
            remove_extra_whitespaces: model.remove_extra_whitespaces,
        };
        Self::from_pieces(pieces, &spec, "spiece.model")
    }

    /// Builds the tokenizer from the vocabulary llama.cpp embeds in a T5 GGUF (`tokenizer.ggml.tokens`,
    /// `.scores`, `.token_type`, `.precompiled_charsmap`, `.add_space_prefix`, `.remove_extra_whitespaces`,
    /// `.eos_token_id`, `.unknown_token_id`, `.padding_token_id`). Token `i` gets id `i`.
    #[allow(clippy::too_many_arguments)]
    pub fn from_gguf_vocab(
        tokens: Vec<String>,
        scores: Vec<f32>,
        token_types: Vec<i32>,
        precompiled_charsmap: Vec<u8>,
        add_space_prefix: bool,
        remove_extra_whitespaces: bool,
        eos_id: u32,
        unk_id: u32,
        pad_id: u32,
    ) -> Result<Self> {
        let n = tokens.len();
        if scores.len() != n || token_types.len() != n {
            return Err(Error::Invalid(format!(
                "the GGUF tokenizer has {n} tokens but {} scores and {} token types",
                scores.len(),
                token_types.len()
            )));
        }
        let pieces = tokens
            .into_iter()
            .zip(scores)
            .zip(token_types)
            .map(|((piece, score), kind)| Ok(Piece { piece, score, kind: PieceType::from_code(kind.into())? }))
            .collect::<Result<Vec<_>>>()?;
        let id = |value: u32, what: &str| {
            usize::try_from(value).ok().filter(|&id| id < n).ok_or_else(|| {
                Error::Invalid(format!("the GGUF tokenizer's {what} id {value} is not among its {n} tokens"))
            })
        };
        let byte_fallback = pieces.iter().any(|p| p.kind == PieceType::Byte);
        let spec = SpmSpec {
            unk_id: id(unk_id, "unknown-token")?,
            eos_id: id(eos_id, "end-of-sequence")?,
            pad_id: id(pad_id, "padding")?,
            byte_fallback,
            precompiled_charsmap: &precompiled_charsmap,
            add_dummy_prefix: add_space_prefix,
            remove_extra_whitespaces,
        };
        Self::from_pieces(pieces, &spec, "the GGUF tokenizer")
    }

    fn from_pieces(pieces: Vec<Piece>, spec: &SpmSpec, source: &str) -> Result<Self> {
        let added: Vec<AddedToken> = pieces
            .iter()
            .filter_map(|p| match p.kind {
                PieceType::Control | PieceType::Unknown => Some(AddedToken::from(p.piece.clone(), true)),
                PieceType::UserDefined => Some(AddedToken::from(p.piece.clone(), false)),
                _ => None,
            })
            .collect();
        let vocab = pieces.into_iter().map(|p| (p.piece, f64::from(p.score))).collect();
        let unigram = Unigram::from(vocab, Some(spec.unk_id), spec.byte_fallback)
            .map_err(|e| tokenizer_error(&format!("{source} is not a valid Unigram vocabulary"), e))?;

        let mut tokenizer = Tokenizer::new(unigram);
        if !spec.precompiled_charsmap.is_empty() {
            check_charsmap(spec.precompiled_charsmap).map_err(|e| Error::Invalid(format!("{source}: {e}")))?;
            let normalizer = Precompiled::from(spec.precompiled_charsmap)
                .map_err(|e| tokenizer_error(&format!("{source} has an unreadable precompiled_charsmap"), e))?;
            tokenizer.with_normalizer(Some(normalizer));
        }
        let prepend = if spec.add_dummy_prefix { PrependScheme::Always } else { PrependScheme::Never };
        let mut pre_tokenizers: Vec<PreTokenizerWrapper> = Vec::new();
        if spec.remove_extra_whitespaces {
            pre_tokenizers.push(WhitespaceSplit.into());
        }
        pre_tokenizers.push(Metaspace::new(SPIECE_SPACE, prepend, true).into());
        tokenizer.with_pre_tokenizer(Some(PreTokenizerSequence::new(pre_tokenizers)));
        tokenizer.add_special_tokens(&added);
        Ok(Self { tokenizer, eos_id: spec.eos_id as u32, pad_id: spec.pad_id as u32 })
    }

    /// The end-of-sequence id (`</s>`, 1 in T5).
    pub fn eos_id(&self) -> u32 {
        self.eos_id
    }

    /// The padding id (`<pad>`, 0 in T5).
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// Exactly `max_len` ids: the prompt's tokens (truncated to fit), `</s>`, then padding.
    pub fn encode(&self, prompt: &str, max_len: usize) -> Result<Vec<u32>> {
        let ids = encode_plain(&self.tokenizer, prompt)?;
        frame(&[], ids, &[self.eos_id], self.pad_id, max_len)
    }
}

/// What a SentencePiece Unigram tokenizer needs besides its pieces.
struct SpmSpec<'a> {
    unk_id: usize,
    eos_id: usize,
    pad_id: usize,
    byte_fallback: bool,
    precompiled_charsmap: &'a [u8],
    add_dummy_prefix: bool,
    remove_extra_whitespaces: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    const TINY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tiny");
    const GOLDEN_PROMPT: &str = "Make the red square blue and add a small yellow sun in the sky";

    fn read(path: &str) -> Vec<u8> {
        std::fs::read(format!("{TINY}/{path}")).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    fn golden_ids(key: &str) -> Vec<u32> {
        let bytes = read("golden/golden_run.safetensors");
        let tensors = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let view = tensors.tensor(key).unwrap();
        assert_eq!(view.dtype(), safetensors::Dtype::I64);
        view.data().chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap()) as u32).collect()
    }

    fn clip() -> ClipTokenizer {
        let vocab = String::from_utf8(read("FLUX.1-Kontext-dev-tiny/tokenizer/vocab.json")).unwrap();
        let merges = String::from_utf8(read("FLUX.1-Kontext-dev-tiny/tokenizer/merges.txt")).unwrap();
        ClipTokenizer::from_vocab_merges(&vocab, &merges).unwrap()
    }

    fn padded(mut ids: Vec<u32>, pad: u32, len: usize) -> Vec<u32> {
        ids.resize(len, pad);
        ids
    }

    #[test]
    fn clip_ids_equal_the_golden_run() {
        let tokenizer = clip();
        assert_eq!((tokenizer.bos_id(), tokenizer.eos_id()), (4094, 4095));
        assert_eq!(tokenizer.encode(GOLDEN_PROMPT).unwrap(), golden_ids("clip_input_ids"));
    }

    #[test]
    fn clip_lower_cases_and_collapses_whitespace() {
        let tokenizer = clip();
        let shouted = "  MAKE the RED square\tblue and   add a small YELLOW sun\nin the sky ";
        assert_eq!(tokenizer.encode(shouted).unwrap(), golden_ids("clip_input_ids"));
    }

    #[test]
    fn clip_punctuation_digits_and_apostrophes_match_real_clip_ids() {
        // real_clip_token_ids.json: "Change the car's color to GREEN!!  (keep   the background) 4k, 1024x768"
        // gives these real CLIP-L ids. The tiny vocab holds the first 3582 real merges, so every word whose
        // real tokens are all below 4094 tokenizes identically; only "background" (5994) is beyond it.
        let ids = clip().encode("Change the car's color to GREEN!!  (keep   the ) 4k, 1024x768").unwrap();
        let expected = [
            4094, 1799, 518, 1615, 568, 3140, 531, 1901, 748, 263, 1726, 518, 264, 275, 330, 267, 272, 271, 273, 275,
            343, 278, 277, 279, 4095,
        ];
        assert_eq!(ids, padded(expected.to_vec(), 4095, 77));
    }

    #[test]
    fn clip_empty_prompt_is_bos_eos_and_padding() {
        assert_eq!(clip().encode("").unwrap(), padded(vec![4094, 4095], 4095, 77));
    }

    #[test]
    fn clip_truncates_long_prompts_to_75_tokens_between_bos_and_eos() {
        let tokenizer = clip();
        let golden = golden_ids("clip_input_ids");
        let words = &golden[1..16]; // 15 tokens of the golden prompt
        let ids = tokenizer.encode(&[GOLDEN_PROMPT; 6].join(" ")).unwrap();
        let mut expected = vec![4094];
        expected.extend(words.iter().cycle().take(75));
        expected.push(4095);
        assert_eq!(ids, expected);
    }

    /// The built-in CLIP-L tokenizer gives transformers' ids for every prompt of `real_clip_token_ids.json`
    /// (the real vocab.json and merges.txt, punctuation, digits, accents and an emoji), padded to 77; a tokenizer
    /// with the merge rules in another order (the tiny one) does not.
    #[test]
    fn built_in_clip_l_matches_the_real_tokenizer() {
        let real: serde_json::Value = serde_json::from_slice(&read("golden/real_clip_token_ids.json")).unwrap();
        let ids = |value: &serde_json::Value| -> Vec<u32> {
            value.as_array().unwrap().iter().map(|id| id.as_u64().unwrap() as u32).collect()
        };
        let tokenizer = ClipTokenizer::clip_l().unwrap();
        assert_eq!((tokenizer.bos_id(), tokenizer.eos_id()), (49406, 49407));
        assert_eq!(real["vocab_size"], 49408);
        let prompts = real["prompts"].as_array().unwrap();
        assert!(prompts.len() >= 4);
        for prompt in prompts {
            let text = prompt["text"].as_str().unwrap();
            assert_eq!(tokenizer.encode(text).unwrap(), ids(&prompt["ids_padded77"]), "{text}");
        }
        let background = "Change the car's color to GREEN!!  (keep   the background) 4k, 1024x768";
        let expected = prompts.iter().find(|p| p["text"] == background).unwrap();
        assert_ne!(clip().encode(background).unwrap(), ids(&expected["ids_padded77"]));
    }

    #[test]
    fn clip_from_tokenizer_json_equals_vocab_and_merges() {
        let tokenizer = clip();
        let json = tokenizer.tokenizer.to_string(false).unwrap();
        let reloaded = ClipTokenizer::from_tokenizer_json(json.as_bytes()).unwrap();
        for prompt in [GOLDEN_PROMPT, "", "a <|endoftext|> b", "naïve café — déjà vu 🙂"] {
            assert_eq!(reloaded.encode(prompt).unwrap(), tokenizer.encode(prompt).unwrap(), "{prompt}");
        }
    }

    #[test]
    fn clip_rejects_merges_with_tokens_outside_the_vocab() {
        let err = ClipTokenizer::from_vocab_merges(r#"{"a": 0, "<|startoftext|>": 1, "<|endoftext|>": 2}"#, "a b\n");
        assert!(err.is_err());
    }

    fn t5_from_json() -> T5Tokenizer {
        T5Tokenizer::from_tokenizer_json(&read("FLUX.1-Kontext-dev-tiny/tokenizer_2/tokenizer.json")).unwrap()
    }

    fn t5_from_spiece() -> T5Tokenizer {
        T5Tokenizer::from_spiece_model(&read("FLUX.1-Kontext-dev-tiny/tokenizer_2/spiece.model")).unwrap()
    }

    #[test]
    fn t5_ids_equal_the_golden_run_from_tokenizer_json_and_spiece_model() {
        let golden = golden_ids("t5_input_ids");
        assert_eq!(t5_from_json().encode(GOLDEN_PROMPT, T5_MAX_LEN).unwrap(), golden);
        assert_eq!(t5_from_spiece().encode(GOLDEN_PROMPT, T5_MAX_LEN).unwrap(), golden);
    }

    #[test]
    fn t5_spiece_model_parses_as_the_reference_describes() {
        let model = SentencePieceModel::parse(&read("FLUX.1-Kontext-dev-tiny/tokenizer_2/spiece.model")).unwrap();
        assert_eq!(model.pieces.len(), 148);
        assert_eq!((model.pad_id, model.eos_id, model.unk_id), (0, 1, 2));
        assert_eq!(model.pieces[1], Piece { piece: "</s>".into(), score: 0.0, kind: PieceType::Control });
        assert_eq!(model.pieces[2].kind, PieceType::Unknown);
        assert_eq!(model.pieces[3].piece, "▁");
        assert!(model.add_dummy_prefix && model.remove_extra_whitespaces && !model.byte_fallback);
        assert!(!model.precompiled_charsmap.is_empty());
    }

    #[test]
    fn t5_sources_agree_on_other_prompts() {
        let (json, spiece) = (t5_from_json(), t5_from_spiece());
        let long = [GOLDEN_PROMPT; 40].join(" ");
        for prompt in ["", "  Hello,   WORLD!  ", "ｆｕｌｌ－ｗｉｄｔｈ ① café", "a </s> b <extra_id_0>", long.as_str()]
        {
            assert_eq!(
                spiece.encode(prompt, T5_MAX_LEN).unwrap(),
                json.encode(prompt, T5_MAX_LEN).unwrap(),
                "{prompt}"
            );
        }
    }

    fn t5_from_gguf() -> T5Tokenizer {
        use crate::model::t5::test_gguf::{GgufHeader, GgufValue};
        let header = GgufHeader::parse(&read("bfl_gguf/t5_encoder-F16.gguf"));
        let kv = |key: &str| header.kv.get(&format!("tokenizer.ggml.{key}")).unwrap_or_else(|| panic!("{key}"));
        let array = |key: &str| match kv(key) {
            GgufValue::Array(values) => values.clone(),
            other => panic!("{key}: {other:?}"),
        };
        let tokens = array("tokens").iter().map(|v| v.as_str().to_string()).collect();
        let scores = array("scores").iter().map(|v| v.as_f64() as f32).collect();
        let types = array("token_type").iter().map(|v| v.as_f64() as i32).collect();
        let charsmap = array("precompiled_charsmap").iter().map(|v| v.as_f64() as u8).collect();
        T5Tokenizer::from_gguf_vocab(
            tokens,
            scores,
            types,
            charsmap,
            kv("add_space_prefix").as_bool(),
            kv("remove_extra_whitespaces").as_bool(),
            kv("eos_token_id").as_f64() as u32,
            kv("unknown_token_id").as_f64() as u32,
            kv("padding_token_id").as_f64() as u32,
        )
        .unwrap()
    }

    #[test]
    fn t5_ids_equal_the_golden_run_from_the_gguf_vocab() {
        let tokenizer = t5_from_gguf();
        assert_eq!((tokenizer.eos_id(), tokenizer.pad_id()), (1, 0));
        assert_eq!(tokenizer.encode(GOLDEN_PROMPT, T5_MAX_LEN).unwrap(), golden_ids("t5_input_ids"));
        let json = t5_from_json();
        let long = [GOLDEN_PROMPT; 40].join(" ");
        for prompt in ["", "  Hello,   WORLD!  ", "ｆｕｌｌ－ｗｉｄｔｈ ① café", "a </s> b", long.as_str()]
        {
            assert_eq!(
                tokenizer.encode(prompt, T5_MAX_LEN).unwrap(),
                json.encode(prompt, T5_MAX_LEN).unwrap(),
                "{prompt}"
            );
        }
    }

    #[test]
    fn t5_gguf_vocab_rejects_mismatched_lengths_and_ids() {
        let tokens = vec!["<pad>".to_string(), "</s>".into(), "<unk>".into(), "▁".into()];
        let build = |scores: Vec<f32>, eos: u32| {
            T5Tokenizer::from_gguf_vocab(tokens.clone(), scores, vec![3, 3, 2, 1], vec![], true, true, eos, 2, 0)
        };
        assert!(build(vec![0.0; 4], 1).is_ok());
        assert!(build(vec![0.0; 3], 1).is_err());
        assert!(build(vec![0.0; 4], 9).is_err());
    }

    #[test]
    fn t5_tokenizer_json_truncation_and_padding_settings_are_ignored() {
        let mut json: serde_json::Value =
            serde_json::from_slice(&read("FLUX.1-Kontext-dev-tiny/tokenizer_2/tokenizer.json")).unwrap();
        json["truncation"] =
            serde_json::json!({"direction": "Right", "max_length": 4, "strategy": "LongestFirst", "stride": 0});
        json["padding"] = serde_json::json!({"strategy": {"Fixed": 16}, "direction": "Right", "pad_to_multiple_of": null,
            "pad_id": 0, "pad_type_id": 0, "pad_token": "<pad>"});
        let tokenizer = T5Tokenizer::from_tokenizer_json(json.to_string().as_bytes()).unwrap();
        assert_eq!(tokenizer.encode(GOLDEN_PROMPT, T5_MAX_LEN).unwrap(), golden_ids("t5_input_ids"));
    }

    #[test]
    fn t5_empty_prompt_is_eos_and_padding() {
        assert_eq!(t5_from_json().encode("", 8).unwrap(), vec![1, 0, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn t5_truncates_and_keeps_eos_last() {
        let golden = golden_ids("t5_input_ids");
        let ids = t5_from_json().encode(GOLDEN_PROMPT, 6).unwrap();
        assert_eq!(ids, [&golden[..5], &[1]].concat());
    }

    #[test]
    fn t5_rejects_garbage_spiece_model() {
        assert!(T5Tokenizer::from_spiece_model(b"\x0a\xff\xff\xff").is_err());
        assert!(T5Tokenizer::from_spiece_model(b"not a model").is_err());
    }

    #[test]
    fn damaged_charsmaps_are_refused_and_the_real_one_passes() {
        let model = SentencePieceModel::parse(&read("FLUX.1-Kontext-dev-tiny/tokenizer_2/spiece.model")).unwrap();
        let real = model.precompiled_charsmap.clone();
        check_charsmap(&real).unwrap();
        let with_trie = |units: &[u32], strings: &[u8]| {
            let mut map = ((units.len() * 4) as u32).to_le_bytes().to_vec();
            units.iter().for_each(|u| map.extend(u.to_le_bytes()));
            map.extend(strings);
            map
        };
        let refused = |map: Vec<u8>, expected: &str| {
            let err = check_charsmap(&map).unwrap_err().to_string();
            assert!(err.contains(expected), "{err}");
        };
        refused(vec![1, 2], "shorter than its 4-byte header");
        refused(with_trie(&[], b""), "trie is empty");
        refused(vec![255, 255, 0, 0, 1], "longer than the map");
        // A root whose children lie past a 2-unit array.
        refused(with_trie(&[0, 0], b""), "outside the trie");
        // 256 units with the root at 0: byte 97 ('a') leads to a leaf (offset 0, so the leaf is that same unit)
        // whose value, 97 | 256 = 353, falls inside a 2-byte "é".
        let mut units = vec![0u32; 256];
        units[97] = 97 | (1 << 8);
        refused(with_trie(&units, "é".repeat(200).as_bytes()), "outside its strings");
        let mut tokenizer_json: serde_json::Value =
            serde_json::from_slice(&read("FLUX.1-Kontext-dev-tiny/tokenizer_2/tokenizer.json")).unwrap();
        let damaged = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, with_trie(&[0, 0], b""));
        fn set_charsmap(value: &mut serde_json::Value, charsmap: &str) {
            match value {
                serde_json::Value::Object(object) => {
                    if object.get("type").and_then(|t| t.as_str()) == Some("Precompiled") {
                        object.insert("precompiled_charsmap".into(), charsmap.into());
                    }
                    object.values_mut().for_each(|v| set_charsmap(v, charsmap));
                }
                serde_json::Value::Array(items) => items.iter_mut().for_each(|v| set_charsmap(v, charsmap)),
                _ => {}
            }
        }
        set_charsmap(&mut tokenizer_json, &damaged);
        let err = T5Tokenizer::from_tokenizer_json(tokenizer_json.to_string().as_bytes()).err().unwrap().to_string();
        assert!(err.contains("precompiled_charsmap is damaged"), "{err}");
    }
}
