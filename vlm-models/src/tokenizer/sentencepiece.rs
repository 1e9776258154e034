//! SentencePiece `.model` files as [`tokenizers::Tokenizer`]s.
//!
//! LLaMA, LLaMA-2-chat and Vicuna (MiniGPT-4's language models) often ship only the
//! SentencePiece `tokenizer.model`, a serialized `ModelProto` (sentencepiece_model.proto),
//! and no tokenizer.json. This module reads that protobuf with a small hand-written
//! reader and rebuilds a [`Tokenizer`] that encodes exactly like the `sentencepiece`
//! library does for BPE models:
//!
//! - **normalizer**: what the file's `normalizer_spec` says — with
//!   `remove_extra_whitespaces`, strip leading and trailing spaces and collapse runs of
//!   spaces; with `add_dummy_prefix`, prepend a space to every non-empty text; with
//!   `escape_whitespaces`, spaces become `▁` (U+2581). LLaMA: dummy prefix on, extra
//!   whitespace kept, spaces escaped. Only spaces (U+0020) are touched; tabs and newlines
//!   stay and go through byte fallback (`<0x0A>`).
//! - **model**: BPE over the whole normalized text with the file's pieces as vocabulary
//!   (ids = piece positions) and merges derived from the vocabulary: every split of a
//!   piece into two pieces is a merge, ranked by the merged piece's score (sentencepiece
//!   applies the highest-scoring available merge first). Characters outside the
//!   vocabulary become `<0xNN>` byte pieces when the model has `byte_fallback`, else
//!   `<unk>` (consecutive unknowns fused into one, as sentencepiece does).
//! - **decoder**: `▁` → space, byte pieces → UTF-8, and the dummy prefix's space removed
//!   from the start. `decode(ids, true)` gives `sentencepiece`'s text for the ids that
//!   encoding produces, except that `<unk>` is dropped where `sentencepiece` writes
//!   ` ⁇ ` (only models without byte fallback produce `<unk>`; LLaMA never does).
//! - **control pieces** (`<s>`, `</s>`) and `<unk>` are special added tokens, so
//!   `decode(ids, true)` drops them like `sentencepiece` does. Like `sentencepiece`
//!   (and unlike transformers' LlamaTokenizer), the literal text `"</s>"` in the input is
//!   encoded as text, not as the EOS id: the tokenizer comes with
//!   `encode_special_tokens` set. Call `tokenizer.set_encode_special_tokens(false)` to
//!   have special-token text in the input mapped to their ids instead.
//! - **no post-processor**: `encode(text, true)` adds no BOS. The caller decides, as
//!   MiniGPT-4 does (BOS before the first text segment only): prepend
//!   [`SentencePieceModel::bos_id`] where the model needs it.
//!
//! Not supported (each a clear [`Error::BadFile`] naming the file; use the model's
//! tokenizer.json instead): Unigram, word and char models (T5, ALBERT, XLNet style),
//! normalizers with a precompiled character map (`nmt_nfkc` and friends), user-defined
//! and unused pieces, and `treat_whitespace_as_suffix`.
//!
//! ```no_run
//! use std::path::Path;
//! use vlm_models::tokenizer::{sentencepiece_tokenizer, SentencePieceModel};
//!
//! let path = Path::new("llama/tokenizer.model");
//! let tokenizer = sentencepiece_tokenizer(path)?;
//! let mut ids = tokenizer.encode("Hello world", false)?.get_ids().to_vec(); // [15043, 3186]
//! let bos = SentencePieceModel::load(path)?.bos_id.expect("LLaMA has <s>");
//! ids.insert(0, bos);
//! assert_eq!(tokenizer.decode(&ids, true)?, "Hello world");
//! # Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
//! ```

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::path::Path;

use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::{NormalizerWrapper, Prepend, Replace, Sequence};
use tokenizers::{AddedToken, Tokenizer};

use vlm_contract::{Error, Result};

/// Internal results: a message that the public functions wrap into [`Error`].
type Parsed<T> = std::result::Result<T, String>;

/// The whitespace symbol `▁` (U+2581) that replaces spaces (sentencepiece's
/// `kSpaceSymbol`, normalizer.h).
pub const SPACE_SYMBOL: &str = "\u{2581}";

/// Field numbers of sentencepiece_model.proto (package `sentencepiece`).
mod field {
    /// `message ModelProto`.
    pub mod model {
        pub const PIECES: u32 = 1;
        pub const TRAINER_SPEC: u32 = 2;
        pub const NORMALIZER_SPEC: u32 = 3;
    }
    /// `message ModelProto.SentencePiece`.
    pub mod piece {
        pub const PIECE: u32 = 1;
        pub const SCORE: u32 = 2;
        pub const TYPE: u32 = 3;
    }
    /// `message TrainerSpec` (only the fields that matter when encoding).
    pub mod trainer {
        pub const MODEL_TYPE: u32 = 3;
        pub const TREAT_WHITESPACE_AS_SUFFIX: u32 = 24;
        pub const BYTE_FALLBACK: u32 = 35;
        pub const BOS_PIECE: u32 = 46;
        pub const EOS_PIECE: u32 = 47;
        pub const PAD_PIECE: u32 = 48;
    }
    /// `message NormalizerSpec`.
    pub mod normalizer {
        pub const NAME: u32 = 1;
        pub const PRECOMPILED_CHARSMAP: u32 = 2;
        pub const ADD_DUMMY_PREFIX: u32 = 3;
        pub const REMOVE_EXTRA_WHITESPACES: u32 = 4;
        pub const ESCAPE_WHITESPACES: u32 = 5;
    }
}

/// `ModelProto.SentencePiece.Type`: how a piece takes part in encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PieceType {
    /// An ordinary piece (proto value 1, the default).
    Normal,
    /// The unknown piece, `<unk>` (2).
    Unknown,
    /// A control symbol such as `<s>` and `</s>`: never produced from text (3).
    Control,
    /// A user-defined symbol, always kept whole in the input (4).
    UserDefined,
    /// An unused piece: merged into, then split again (5).
    Unused,
    /// A byte piece `<0xNN>` for byte fallback (6).
    Byte,
}

impl PieceType {
    fn from_proto(value: u64) -> Option<Self> {
        Some(match value {
            1 => Self::Normal,
            2 => Self::Unknown,
            3 => Self::Control,
            4 => Self::UserDefined,
            5 => Self::Unused,
            6 => Self::Byte,
            _ => return None,
        })
    }
}

/// One vocabulary entry; its id is its position in [`SentencePieceModel::pieces`].
#[derive(Debug, Clone, PartialEq)]
pub struct Piece {
    /// The piece text, with `▁` for spaces.
    pub piece: String,
    /// Its score: for BPE, higher merges first.
    pub score: f32,
    /// How it takes part in encoding.
    pub kind: PieceType,
}

/// `TrainerSpec.ModelType`: the segmentation algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ModelType {
    /// Unigram language model (proto value 1, the default).
    Unigram,
    /// Byte-pair encoding (2): LLaMA, Vicuna, Mistral.
    Bpe,
    /// Whitespace-delimited words (3).
    Word,
    /// Characters (4).
    Char,
}

impl ModelType {
    fn from_proto(value: u64) -> Option<Self> {
        Some(match value {
            1 => Self::Unigram,
            2 => Self::Bpe,
            3 => Self::Word,
            4 => Self::Char,
            _ => return None,
        })
    }
}

/// `NormalizerSpec`: how text is normalized before segmentation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NormalizerSpec {
    /// The rule set's name (`identity`, `nmt_nfkc`, …); informative only.
    pub name: String,
    /// The compiled normalization rules; empty for `identity`.
    pub precompiled_charsmap: Vec<u8>,
    /// Prepend a space (`▁`) to the text.
    pub add_dummy_prefix: bool,
    /// Strip leading and trailing spaces and collapse runs of spaces.
    pub remove_extra_whitespaces: bool,
    /// Replace spaces with `▁`.
    pub escape_whitespaces: bool,
}

impl Default for NormalizerSpec {
    /// The proto2 defaults of sentencepiece_model.proto.
    fn default() -> Self {
        Self {
            name: String::new(),
            precompiled_charsmap: Vec::new(),
            add_dummy_prefix: true,
            remove_extra_whitespaces: true,
            escape_whitespaces: true,
        }
    }
}

/// A parsed SentencePiece `.model` file: what encoding needs from it.
#[derive(Debug, Clone, PartialEq)]
pub struct SentencePieceModel {
    /// The vocabulary; a piece's id is its index.
    pub pieces: Vec<Piece>,
    /// The segmentation algorithm.
    pub model_type: ModelType,
    /// Characters outside the vocabulary become `<0xNN>` byte pieces.
    pub byte_fallback: bool,
    /// The whitespace symbol ends pieces instead of starting them (unsupported).
    pub treat_whitespace_as_suffix: bool,
    /// The id of the [`PieceType::Unknown`] piece.
    pub unk_id: u32,
    /// The id of the trainer's `bos_piece` (default `<s>`), when the vocabulary has it.
    pub bos_id: Option<u32>,
    /// The id of the trainer's `eos_piece` (default `</s>`), when the vocabulary has it.
    pub eos_id: Option<u32>,
    /// The id of the trainer's `pad_piece` (default `<pad>`), when the vocabulary has it.
    pub pad_id: Option<u32>,
    /// The normalization rules.
    pub normalizer: NormalizerSpec,
}

/// Loads a SentencePiece `.model` file as a [`Tokenizer`] (see the module docs for what
/// it encodes and what it does not support). No BOS is added by `encode`.
pub fn sentencepiece_tokenizer(path: &Path) -> Result<Tokenizer> {
    SentencePieceModel::load(path)?
        .build_tokenizer()
        .map_err(|message| Error::bad_file(path, message))
}

impl SentencePieceModel {
    /// Reads and parses a `.model` file.
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::MissingFile {
                    path: path.to_path_buf(),
                    hint: "the SentencePiece tokenizer.model of the language model is needed (or its tokenizer.json)".into(),
                }
            } else {
                Error::bad_file(path, e)
            }
        })?;
        Self::parse(&bytes).map_err(|message| {
            Error::bad_file(
                path,
                format!("not a valid SentencePiece model file: {message}"),
            )
        })
    }

    /// Parses the bytes of a `.model` file (a serialized `ModelProto`).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        Self::parse(bytes).map_err(|message| {
            Error::Tokenizer(format!("not a valid SentencePiece model: {message}"))
        })
    }

    /// Builds the [`Tokenizer`] (see the module docs).
    pub fn to_tokenizer(&self) -> Result<Tokenizer> {
        self.build_tokenizer()
            .map_err(|message| Error::Tokenizer(format!("SentencePiece model: {message}")))
    }

    /// The id of a piece (any type), if the vocabulary has it.
    pub fn piece_to_id(&self, piece: &str) -> Option<u32> {
        self.pieces
            .iter()
            .position(|p| p.piece == piece)
            .and_then(|i| u32::try_from(i).ok())
    }

    fn parse(bytes: &[u8]) -> Parsed<Self> {
        let mut pieces = Vec::new();
        let mut trainer = TrainerSpec::default();
        let mut normalizer = NormalizerSpec::default();
        let mut reader = ProtoReader::new(bytes);
        while let Some((number, value)) = reader.next_field()? {
            match number {
                field::model::PIECES => {
                    let message = value.bytes("ModelProto.pieces")?;
                    pieces.push(
                        parse_piece(message).map_err(|e| format!("piece {}: {e}", pieces.len()))?,
                    );
                }
                field::model::TRAINER_SPEC => {
                    trainer = parse_trainer_spec(value.bytes("ModelProto.trainer_spec")?)
                        .map_err(|e| format!("trainer_spec: {e}"))?;
                }
                field::model::NORMALIZER_SPEC => {
                    normalizer = parse_normalizer_spec(value.bytes("ModelProto.normalizer_spec")?)
                        .map_err(|e| format!("normalizer_spec: {e}"))?;
                }
                _ => {}
            }
        }
        if pieces.is_empty() {
            return Err("it has no pieces (vocabulary)".into());
        }
        if u32::try_from(pieces.len()).is_err() {
            return Err(format!("{} pieces do not fit 32-bit ids", pieces.len()));
        }
        let mut seen: HashMap<&str, usize, PieceHasher> =
            HashMap::with_capacity_and_hasher(pieces.len(), PieceHasher::default());
        for (id, p) in pieces.iter().enumerate() {
            if let Some(first) = seen.insert(p.piece.as_str(), id) {
                return Err(format!(
                    "piece {:?} appears twice (ids {first} and {id})",
                    p.piece
                ));
            }
        }
        let id_of = |piece: &str| seen.get(piece).map(|&i| i as u32);
        let mut unknown = pieces
            .iter()
            .enumerate()
            .filter(|(_, p)| p.kind == PieceType::Unknown);
        let unk_id = match (unknown.next(), unknown.next()) {
            (Some((id, _)), None) => id as u32,
            (None, _) => return Err("it has no piece of type UNKNOWN (<unk>)".into()),
            (Some((a, _)), Some((b, _))) => {
                return Err(format!(
                    "it has more than one piece of type UNKNOWN (ids {a} and {b})"
                ))
            }
        };
        Ok(Self {
            model_type: trainer.model_type,
            byte_fallback: trainer.byte_fallback,
            treat_whitespace_as_suffix: trainer.treat_whitespace_as_suffix,
            unk_id,
            bos_id: id_of(&trainer.bos_piece),
            eos_id: id_of(&trainer.eos_piece),
            pad_id: id_of(&trainer.pad_piece),
            normalizer,
            pieces,
        })
    }

    fn build_tokenizer(&self) -> Parsed<Tokenizer> {
        self.check_supported()?;
        let vocab: Vocab = self
            .pieces
            .iter()
            .enumerate()
            .map(|(id, p)| (p.piece.clone(), id as u32))
            .collect();
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, bpe_merges(&self.pieces))
            .unk_token(self.pieces[self.unk_id as usize].piece.clone())
            // sentencepiece merges a run of unknown characters into one <unk>.
            .fuse_unk(true)
            .byte_fallback(self.byte_fallback)
            .build()
            .map_err(|e| format!("building the BPE model failed: {e}"))?;
        let mut tokenizer = Tokenizer::new(bpe);
        tokenizer
            .with_normalizer(Some(self.normalizer()?))
            .map_err(|e| format!("setting the normalizer failed: {e}"))?;
        tokenizer.with_decoder(Some(self.decoder()?));
        let special: Vec<AddedToken> = self
            .pieces
            .iter()
            .filter(|p| matches!(p.kind, PieceType::Control | PieceType::Unknown))
            .map(|p| AddedToken::from(p.piece.clone(), true))
            .collect();
        tokenizer
            .add_special_tokens(special)
            .map_err(|e| format!("adding the control pieces failed: {e}"))?;
        // sentencepiece never maps input text to control pieces.
        tokenizer.set_encode_special_tokens(true);
        Ok(tokenizer)
    }

    fn check_supported(&self) -> Parsed<()> {
        const USE_JSON: &str = "use the model's tokenizer.json instead";
        let kind = match self.model_type {
            ModelType::Bpe => None,
            ModelType::Unigram => Some("a Unigram model (T5, ALBERT, XLNet style)"),
            ModelType::Word => Some("a word model"),
            ModelType::Char => Some("a char model"),
        };
        if let Some(kind) = kind {
            return Err(format!(
                "this SentencePiece file is {kind}; only BPE models (LLaMA, Vicuna, Mistral) can be loaded without a tokenizer.json: {USE_JSON}"
            ));
        }
        if !self.normalizer.precompiled_charsmap.is_empty() {
            return Err(format!(
                "its normalizer {:?} has a precompiled character map, which is not supported (only identity normalization is): {USE_JSON}",
                self.normalizer.name
            ));
        }
        if self.treat_whitespace_as_suffix {
            return Err(format!(
                "treat_whitespace_as_suffix is set, which is not supported: {USE_JSON}"
            ));
        }
        for (kind, name) in [
            (PieceType::UserDefined, "user-defined"),
            (PieceType::Unused, "unused"),
        ] {
            let ids: Vec<usize> = (0..self.pieces.len())
                .filter(|&i| self.pieces[i].kind == kind)
                .collect();
            if let Some(&first) = ids.first() {
                return Err(format!(
                    "it has {} {name} piece(s) (the first is {:?}, id {first}), which are not supported: {USE_JSON}",
                    ids.len(),
                    self.pieces[first].piece
                ));
            }
        }
        Ok(())
    }

    fn normalizer(&self) -> Parsed<NormalizerWrapper> {
        let spec = &self.normalizer;
        let replace = |pattern: tokenizers::normalizers::replace::ReplacePattern, content: &str| {
            Replace::new(pattern, content)
                .map(NormalizerWrapper::from)
                .map_err(|e| format!("building the normalizer failed: {e}"))
        };
        use tokenizers::normalizers::replace::ReplacePattern::{Regex, String as Text};
        let mut steps = Vec::new();
        if spec.remove_extra_whitespaces {
            // normalizer.cc: leading spaces dropped, runs of spaces kept as one, a
            // trailing space dropped; "space" is U+0020 only.
            steps.push(replace(Regex(r"\A +| +\z".into()), "")?);
            steps.push(replace(Regex(" {2,}".into()), " ")?);
        }
        if spec.add_dummy_prefix {
            // `Prepend` leaves empty text alone, as sentencepiece does.
            steps.push(Prepend::new(" ".into()).into());
        }
        if spec.escape_whitespaces {
            steps.push(replace(Text(" ".into()), SPACE_SYMBOL)?);
        }
        Ok(Sequence::new(steps).into())
    }

    fn decoder(&self) -> Parsed<DecoderWrapper> {
        let spec = &self.normalizer;
        let mut steps: Vec<DecoderWrapper> = Vec::new();
        if spec.escape_whitespaces {
            steps.push(
                Replace::new(SPACE_SYMBOL, " ")
                    .map_err(|e| format!("building the decoder failed: {e}"))?
                    .into(),
            );
        }
        steps.push(ByteFallback::new().into());
        steps.push(Fuse::new().into());
        // sentencepiece_processor.cc drops the leading `▁` of the first piece when the
        // normalizer adds a dummy prefix or removes leading whitespace.
        if spec.add_dummy_prefix || spec.remove_extra_whitespaces {
            steps.push(Strip::new(' ', 1, 0).into());
        }
        Ok(DecoderSequence::new(steps).into())
    }
}

/// Merges derived from the vocabulary: every way of splitting a mergeable piece into
/// two mergeable pieces, best score first. sentencepiece's BPE applies, among the
/// adjacent pairs whose concatenation is a piece, the one whose piece scores highest
/// (bpe_model.cc); ranking the merges by that score reproduces it. Ties between pieces
/// go to the lower id, then to the earlier split point, where sentencepiece takes the
/// leftmost pair instead: in LLaMA the only tie is between its space-run pieces (`▁▁` to
/// 16 × `▁`, all scored -1e9), and both orders give the same pieces for runs of any
/// length (tests/sentencepiece.rs checks runs up to 100 spaces).
fn bpe_merges(pieces: &[Piece]) -> Vec<(String, String)> {
    // Only NORMAL pieces take part in merges here (user-defined and unused ones are
    // rejected earlier; control, unknown and byte pieces never merge).
    let mut order: Vec<usize> = (0..pieces.len())
        .filter(|&id| pieces[id].kind == PieceType::Normal)
        .collect();
    let mut mergeable: HashSet<&str, PieceHasher> =
        HashSet::with_capacity_and_hasher(order.len(), PieceHasher::default());
    mergeable.extend(order.iter().map(|&id| pieces[id].piece.as_str()));
    // A stable sort keeps equal scores in id order.
    order.sort_by(|&a, &b| pieces[b].score.total_cmp(&pieces[a].score));
    let mut merges = Vec::with_capacity(2 * order.len());
    for id in order {
        let merged = pieces[id].piece.as_str();
        for (split, _) in merged.char_indices().skip(1) {
            let (left, right) = merged.split_at(split);
            if mergeable.contains(left) && mergeable.contains(right) {
                merges.push((left.to_string(), right.to_string()));
            }
        }
    }
    merges
}

/// FNV-1a: a fast hash for the short piece strings (the vocabulary is trusted, so
/// std's DoS-resistant SipHash buys nothing and costs a large part of the load time).
struct Fnv1a(u64);

impl Default for Fnv1a {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325) // FNV-1a 64-bit offset basis
    }
}

impl Hasher for Fnv1a {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        const PRIME: u64 = 0x0000_0100_0000_01b3; // FNV 64-bit prime
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(PRIME);
        }
    }
}

/// Hash sets and maps keyed by piece text.
type PieceHasher = BuildHasherDefault<Fnv1a>;

/// The `TrainerSpec` fields that matter when encoding, with their proto2 defaults.
struct TrainerSpec {
    model_type: ModelType,
    byte_fallback: bool,
    treat_whitespace_as_suffix: bool,
    bos_piece: String,
    eos_piece: String,
    pad_piece: String,
}

impl Default for TrainerSpec {
    fn default() -> Self {
        Self {
            model_type: ModelType::Unigram,
            byte_fallback: false,
            treat_whitespace_as_suffix: false,
            bos_piece: "<s>".into(),
            eos_piece: "</s>".into(),
            pad_piece: "<pad>".into(),
        }
    }
}

fn parse_piece(bytes: &[u8]) -> Parsed<Piece> {
    let mut piece = None;
    let mut score = 0.0;
    let mut kind = PieceType::Normal;
    let mut reader = ProtoReader::new(bytes);
    while let Some((number, value)) = reader.next_field()? {
        match number {
            field::piece::PIECE => piece = Some(value.string("piece")?.to_string()),
            field::piece::SCORE => score = value.float("score")?,
            field::piece::TYPE => {
                let v = value.varint("type")?;
                kind = PieceType::from_proto(v).ok_or_else(|| format!("unknown piece type {v}"))?;
            }
            _ => {}
        }
    }
    let piece = piece.ok_or("the piece text is missing")?;
    Ok(Piece { piece, score, kind })
}

fn parse_trainer_spec(bytes: &[u8]) -> Parsed<TrainerSpec> {
    let mut spec = TrainerSpec::default();
    let mut reader = ProtoReader::new(bytes);
    while let Some((number, value)) = reader.next_field()? {
        match number {
            field::trainer::MODEL_TYPE => {
                let v = value.varint("model_type")?;
                spec.model_type =
                    ModelType::from_proto(v).ok_or_else(|| format!("unknown model_type {v}"))?;
            }
            field::trainer::BYTE_FALLBACK => {
                spec.byte_fallback = value.varint("byte_fallback")? != 0
            }
            field::trainer::TREAT_WHITESPACE_AS_SUFFIX => {
                spec.treat_whitespace_as_suffix = value.varint("treat_whitespace_as_suffix")? != 0
            }
            field::trainer::BOS_PIECE => spec.bos_piece = value.string("bos_piece")?.into(),
            field::trainer::EOS_PIECE => spec.eos_piece = value.string("eos_piece")?.into(),
            field::trainer::PAD_PIECE => spec.pad_piece = value.string("pad_piece")?.into(),
            _ => {}
        }
    }
    Ok(spec)
}

fn parse_normalizer_spec(bytes: &[u8]) -> Parsed<NormalizerSpec> {
    let mut spec = NormalizerSpec::default();
    let mut reader = ProtoReader::new(bytes);
    while let Some((number, value)) = reader.next_field()? {
        match number {
            field::normalizer::NAME => spec.name = value.string("name")?.into(),
            field::normalizer::PRECOMPILED_CHARSMAP => {
                spec.precompiled_charsmap = value.bytes("precompiled_charsmap")?.to_vec()
            }
            field::normalizer::ADD_DUMMY_PREFIX => {
                spec.add_dummy_prefix = value.varint("add_dummy_prefix")? != 0
            }
            field::normalizer::REMOVE_EXTRA_WHITESPACES => {
                spec.remove_extra_whitespaces = value.varint("remove_extra_whitespaces")? != 0
            }
            field::normalizer::ESCAPE_WHITESPACES => {
                spec.escape_whitespaces = value.varint("escape_whitespaces")? != 0
            }
            _ => {}
        }
    }
    Ok(spec)
}

/// One field's value, by protobuf wire type.
#[derive(Debug, Clone, Copy)]
enum WireValue<'a> {
    Varint(u64),
    Fixed64,
    LengthDelimited(&'a [u8]),
    Fixed32(u32),
}

impl<'a> WireValue<'a> {
    fn wire_name(&self) -> &'static str {
        match self {
            Self::Varint(_) => "varint",
            Self::Fixed64 => "fixed64",
            Self::LengthDelimited(_) => "length-delimited",
            Self::Fixed32(_) => "fixed32",
        }
    }

    fn mismatch(&self, name: &str, expected: &str) -> String {
        format!(
            "field {name} is {} where {expected} was expected",
            self.wire_name()
        )
    }

    fn varint(&self, name: &str) -> Parsed<u64> {
        match *self {
            Self::Varint(v) => Ok(v),
            _ => Err(self.mismatch(name, "a varint")),
        }
    }

    fn float(&self, name: &str) -> Parsed<f32> {
        match *self {
            Self::Fixed32(v) => Ok(f32::from_bits(v)),
            _ => Err(self.mismatch(name, "a float (fixed32)")),
        }
    }

    fn bytes(&self, name: &str) -> Parsed<&'a [u8]> {
        match *self {
            Self::LengthDelimited(b) => Ok(b),
            _ => Err(self.mismatch(name, "length-delimited bytes")),
        }
    }

    fn string(&self, name: &str) -> Parsed<&'a str> {
        std::str::from_utf8(self.bytes(name)?)
            .map_err(|e| format!("field {name} is not valid UTF-8: {e}"))
    }
}

/// A minimal protobuf wire-format reader: enough for sentencepiece_model.proto
/// (varints, fixed32/64, length-delimited); unknown fields are skipped by the callers.
struct ProtoReader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> ProtoReader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    fn take(&mut self, n: usize) -> Parsed<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&end| end <= self.buf.len())
            .ok_or_else(|| {
                format!(
                    "truncated: {n} bytes needed at offset {} of a {}-byte message",
                    self.pos,
                    self.buf.len()
                )
            })?;
        let bytes = &self.buf[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    fn varint(&mut self) -> Parsed<u64> {
        let start = self.pos;
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.take(1)?[0];
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(format!("varint longer than 10 bytes at offset {start}"))
    }

    /// The next field's number and value, or `None` at the end of the message.
    fn next_field(&mut self) -> Parsed<Option<(u32, WireValue<'a>)>> {
        if self.pos == self.buf.len() {
            return Ok(None);
        }
        let at = self.pos;
        let key = self.varint()?;
        let number = u32::try_from(key >> 3)
            .ok()
            .filter(|&n| n != 0)
            .ok_or_else(|| format!("invalid field number {} at offset {at}", key >> 3))?;
        let value = match key & 7 {
            0 => WireValue::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                WireValue::Fixed64
            }
            2 => {
                let len = self.varint()?;
                let len = usize::try_from(len).map_err(|_| format!("length {len} too large"))?;
                WireValue::LengthDelimited(self.take(len)?)
            }
            5 => WireValue::Fixed32(u32::from_le_bytes(
                self.take(4)?
                    .try_into()
                    .map_err(|_| format!("short fixed32 at offset {at}"))?,
            )),
            wire => {
                return Err(format!(
                    "unsupported wire type {wire} (field {number}) at offset {at}"
                ))
            }
        };
        Ok(Some((number, value)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny protobuf writer for building `ModelProto` bytes in tests.
    #[derive(Default)]
    struct Writer(Vec<u8>);

    impl Writer {
        fn varint(&mut self, mut v: u64) -> &mut Self {
            loop {
                let byte = (v & 0x7f) as u8;
                v >>= 7;
                if v == 0 {
                    self.0.push(byte);
                    return self;
                }
                self.0.push(byte | 0x80);
            }
        }
        fn key(&mut self, number: u32, wire: u64) -> &mut Self {
            self.varint((u64::from(number) << 3) | wire)
        }
        fn uint(&mut self, number: u32, v: u64) -> &mut Self {
            self.key(number, 0).varint(v)
        }
        fn bytes(&mut self, number: u32, b: &[u8]) -> &mut Self {
            self.key(number, 2).varint(b.len() as u64);
            self.0.extend_from_slice(b);
            self
        }
        fn float(&mut self, number: u32, v: f32) -> &mut Self {
            self.key(number, 5);
            self.0.extend_from_slice(&v.to_le_bytes());
            self
        }
    }

    fn piece(text: &str, score: f32, kind: u64) -> Vec<u8> {
        let mut w = Writer::default();
        w.bytes(1, text.as_bytes()).float(2, score);
        if kind != 1 {
            w.uint(3, kind);
        }
        w.0
    }

    /// A LLaMA-shaped BPE model: <unk> <s> </s>, 256 byte pieces, then normal pieces
    /// whose scores make "▁a" + "b" win over "a" + "b", and "bc" win over "ab".
    fn tiny_model(add_dummy_prefix: bool) -> Vec<u8> {
        let mut model = Writer::default();
        model.bytes(1, &piece("<unk>", 0.0, 2));
        model.bytes(1, &piece("<s>", 0.0, 3));
        model.bytes(1, &piece("</s>", 0.0, 3));
        for b in 0..=255u8 {
            model.bytes(1, &piece(&format!("<0x{b:02X}>"), 0.0, 6));
        }
        // ids 259..
        let normal = [
            ("▁a", -1.0),
            ("bc", -2.0),
            ("ab", -3.0),
            ("▁abc", -4.0),
            ("▁ab", -5.0),
            ("a", -6.0),
            ("b", -7.0),
            ("c", -8.0),
            ("▁", -9.0),
        ];
        for (text, score) in normal {
            model.bytes(1, &piece(text, score, 1));
        }
        let mut trainer = Writer::default();
        trainer.uint(3, 2).uint(35, 1); // BPE, byte_fallback
        trainer
            .bytes(2, b"ignored model_prefix")
            .uint(40, 0)
            .uint(43, u64::MAX); // pad_id -1
        trainer
            .key(10, 5)
            .0
            .extend_from_slice(&0.99f32.to_le_bytes()); // unknown fixed32
        model.bytes(2, &trainer.0);
        let mut normalizer = Writer::default();
        normalizer
            .bytes(1, b"identity")
            .uint(3, add_dummy_prefix as u64)
            .uint(4, 0);
        model.bytes(3, &normalizer.0);
        model.key(99, 1).0.extend_from_slice(&[0; 8]); // unknown fixed64 field
        model.0
    }

    const A: u32 = 259; // "▁a"
    const BC: u32 = 260;
    const AB: u32 = 261;
    const ABC: u32 = 262; // "▁abc"
    const AB_: u32 = 263; // "▁ab"
    const A_: u32 = 264; // "a"
    const B: u32 = 265;
    const C: u32 = 266;
    const SPACE: u32 = 267; // "▁"

    #[test]
    fn parses_pieces_and_specs() {
        let m = SentencePieceModel::from_bytes(&tiny_model(true)).unwrap();
        assert_eq!(m.pieces.len(), 3 + 256 + 9);
        assert_eq!(m.model_type, ModelType::Bpe);
        assert!(m.byte_fallback);
        assert_eq!(
            (m.unk_id, m.bos_id, m.eos_id, m.pad_id),
            (0, Some(1), Some(2), None)
        );
        assert_eq!(m.pieces[1].kind, PieceType::Control);
        assert_eq!(m.pieces[3 + 0xE4].piece, "<0xE4>");
        assert_eq!(m.pieces[3 + 0xE4].kind, PieceType::Byte);
        assert_eq!(m.pieces[A as usize].piece, "▁a");
        assert_eq!(m.pieces[A as usize].score, -1.0);
        assert_eq!(m.pieces[A as usize].kind, PieceType::Normal);
        assert_eq!(m.normalizer.name, "identity");
        assert!(m.normalizer.add_dummy_prefix);
        assert!(!m.normalizer.remove_extra_whitespaces);
        assert!(m.normalizer.escape_whitespaces, "proto2 default");
        assert_eq!(m.piece_to_id("▁abc"), Some(ABC));
    }

    #[test]
    fn merges_follow_scores() {
        let m = SentencePieceModel::from_bytes(&tiny_model(true)).unwrap();
        let merges = bpe_merges(&m.pieces);
        let pair = |l: &str, r: &str| (l.to_string(), r.to_string());
        assert_eq!(
            merges,
            vec![
                pair("▁", "a"),
                pair("b", "c"),
                pair("a", "b"),
                pair("▁a", "bc"),
                pair("▁ab", "c"),
                pair("▁", "ab"),
                pair("▁a", "b"),
            ]
        );
        let t = m.to_tokenizer().unwrap();
        let ids = |s: &str| t.encode(s, false).unwrap().get_ids().to_vec();
        // "▁abc": ▁+a (-1) first, then b+c (-2), then ▁a+bc → ▁abc.
        assert_eq!(ids("abc"), vec![ABC]);
        // "▁ab▁ab": ▁+a (-1) beats a+b (-3) in both words, then ▁a+b → "▁ab" (-5).
        assert_eq!(ids("ab ab"), vec![AB_, AB_]);
        assert_eq!(ids("bab"), vec![SPACE, B, AB]);
        assert_eq!(ids("cbc"), vec![SPACE, C, BC]);
    }

    #[test]
    fn byte_fallback_and_control_text() {
        let m = SentencePieceModel::from_bytes(&tiny_model(true)).unwrap();
        let t = m.to_tokenizer().unwrap();
        let enc = t.encode("a\u{4e16}\n", false).unwrap();
        // 世 = E4 B8 96
        assert_eq!(enc.get_ids(), [A, 3 + 0xE4, 3 + 0xB8, 3 + 0x96, 3 + 0x0A]);
        assert_eq!(t.decode(enc.get_ids(), true).unwrap(), "a\u{4e16}\n");
        // Control text is text, not the control id; decode drops control ids.
        let enc = t.encode("<s>", false).unwrap();
        assert!(!enc.get_ids().contains(&1), "{:?}", enc.get_ids());
        assert_eq!(t.decode(&[1, A, 2], true).unwrap(), "a");
        assert_eq!(t.encode("", false).unwrap().get_ids(), [] as [u32; 0]);
        // Without byte fallback a run of unknown characters is one <unk>.
        let mut m = m;
        m.byte_fallback = false;
        let t = m.to_tokenizer().unwrap();
        assert_eq!(
            t.encode("a\u{4e16}\u{754c}", false).unwrap().get_ids(),
            [A, 0]
        );
    }

    #[test]
    fn no_dummy_prefix() {
        let m = SentencePieceModel::from_bytes(&tiny_model(false)).unwrap();
        let t = m.to_tokenizer().unwrap();
        assert_eq!(t.encode("ab", false).unwrap().get_ids(), [AB]);
        assert_eq!(t.encode(" abc", false).unwrap().get_ids(), [ABC]);
        // b+c (-2) before a+b (-3): merge order is by score, not by position.
        assert_eq!(t.encode("abc", false).unwrap().get_ids(), [A_, BC]);
        assert_eq!(t.decode(&[A_, BC], true).unwrap(), "abc");
    }

    #[test]
    fn rejects_what_it_cannot_encode_exactly() {
        let mut m = SentencePieceModel::from_bytes(&tiny_model(true)).unwrap();
        m.model_type = ModelType::Unigram;
        let msg = m.to_tokenizer().unwrap_err().to_string();
        assert!(
            msg.contains("Unigram") && msg.contains("tokenizer.json"),
            "{msg}"
        );
        m.model_type = ModelType::Bpe;
        m.pieces[AB as usize].kind = PieceType::UserDefined;
        let msg = m.to_tokenizer().unwrap_err().to_string();
        assert!(
            msg.contains("user-defined") && msg.contains("\"ab\""),
            "{msg}"
        );
    }

    #[test]
    fn malformed_bytes_are_errors() {
        let good = tiny_model(true);
        for bad in [
            &good[..good.len() - 3],
            b"{\"version\": \"1.0\"}".as_slice(),
            &[],
        ] {
            assert!(SentencePieceModel::from_bytes(bad).is_err());
        }
        let path = std::env::temp_dir().join(format!("vlm-sp-{}.model", std::process::id()));
        std::fs::write(&path, b"\x0a\xff").unwrap();
        let msg = sentencepiece_tokenizer(&path).unwrap_err().to_string();
        std::fs::remove_file(&path).ok();
        assert!(
            msg.contains(&path.display().to_string()) && msg.contains("truncated"),
            "{msg}"
        );
    }
}
