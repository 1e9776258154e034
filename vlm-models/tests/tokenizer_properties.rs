//! Property tests for the tokenizer-side parsers: chat templates and SentencePiece
//! `.model` files fed broken input return a typed error or a value, never panic, and never
//! ask the allocator for more than [`MAX_ALLOCATION`] at once (a counting allocator
//! records the largest request). `PROPTEST_CASES` overrides the fixed case counts.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::Path;

use common::hostile::{apply, mutations};
use proptest::prelude::*;
use vlm_contract::{Content, Error, Message, Role};
use vlm_models::tokenizer::{ChatTemplate, SentencePieceModel};

// ---- the allocation guard ---------------------------------------------------------------

/// Largest single allocation a parser other than the image decoder may make for these
/// tiny inputs. A header trusted blindly (a 2^62-byte string, 2^40 pieces) is far above.
const MAX_ALLOCATION: usize = 64 << 20;

/// Records the largest allocation request of each thread (proptest runs a test's cases
/// on one thread, and the test harness runs tests on separate threads).
struct Counting;

thread_local! {
    // `const` and no destructor: usable from inside the allocator.
    static LARGEST: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

fn note(size: usize) {
    let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
}

// SAFETY: forwards to the system allocator; only records sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        System.alloc_zeroed(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Runs `f` and fails when it asked for more than `limit` bytes at once.
fn bounded<T>(limit: usize, f: impl FnOnce() -> T) -> Result<T, TestCaseError> {
    LARGEST.with(|l| l.set(0));
    let out = f();
    let largest = LARGEST.with(|l| l.get());
    if largest > limit {
        return Err(TestCaseError::fail(format!(
            "asked for {largest} bytes at once (limit {limit})"
        )));
    }
    Ok(out)
}

// ---- chat templates ---------------------------------------------------------------------

/// Pieces of Jinja, valid and broken, that chat templates are made of.
const TEMPLATE_PIECES: &[&str] = &[
    "{% for message in messages %}",
    "{% endfor %}",
    "{% if add_generation_prompt %}",
    "{% endif %}",
    "{% else %}",
    "{{ message['role'] }}",
    "{{ message.content }}",
    "{% for c in message['content'] %}{% if c.type == 'image' %}<image>{% else %}{{ c.text }}{% endif %}{% endfor %}",
    "{{ messages[0]['content'][0]['text'] }}",
    "{{ raise_exception('no system message') }}",
    "{{ messages | tojson }}",
    "{{ bos_token }}",
    "{{ eos_token }}",
    "{{ 'x' * 1000 }}",
    "{{ message.content.strip() }}",
    "{% set ns = namespace(n=0) %}",
    "{{ ns.n }}",
    "{% for i in range(100) %}{{ i }}{% endfor %}",
    "{{ 1 / 0 }}",
    "{{ undefined_thing.attr }}",
    "{{ messages[-1] }}",
    "{% macro m(x) %}{{ x }}{% endmacro %}{{ m(1) }}",
    "{{",
    "}}",
    "{%",
    "%}",
    "{# comment #}",
    "plain text ",
    "\n",
];

fn messages() -> impl Strategy<Value = Vec<Message>> {
    let content = prop_oneof![
        Just(Content::Image),
        prop::collection::vec(any::<char>(), 0..20)
            .prop_map(|c| Content::Text(c.into_iter().collect())),
    ];
    let role = prop_oneof![Just(Role::System), Just(Role::User), Just(Role::Assistant)];
    prop::collection::vec(
        (role, prop::collection::vec(content, 0..4))
            .prop_map(|(role, content)| Message { role, content }),
        0..4,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn chat_templates_render_or_fail_typed(
        pieces in prop::collection::vec(prop::sample::select(TEMPLATE_PIECES), 0..10),
        msgs in messages(),
        add_generation_prompt in any::<bool>(),
    ) {
        let source = pieces.concat();
        let rendered = bounded(MAX_ALLOCATION, || {
            ChatTemplate::new(&source, Some("<s>".into()), None)
                .and_then(|t| t.render(&msgs, add_generation_prompt))
        })?;
        if let Err(e) = rendered {
            prop_assert!(matches!(e, Error::Template(_)), "{e}");
        }
    }
}

// ---- SentencePiece .model ---------------------------------------------------------------

fn tiny_sentencepiece_model() -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/minigpt4/vicuna0/model/llm/tokenizer.model");
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Builds a tokenizer from whatever parsed; both steps may fail, neither may panic.
fn check_sentencepiece(bytes: &[u8]) -> Result<(), TestCaseError> {
    let built = bounded(MAX_ALLOCATION, || {
        SentencePieceModel::from_bytes(bytes).and_then(|m| m.to_tokenizer())
    })?;
    if let Err(e) = built {
        prop_assert!(matches!(e, Error::Tokenizer(_)), "{e}");
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_are_not_a_sentencepiece_model(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        check_sentencepiece(&bytes)?;
    }

    #[test]
    fn damaged_sentencepiece_models_are_typed_errors(muts in mutations()) {
        let bytes = apply(tiny_sentencepiece_model(), &muts);
        check_sentencepiece(&bytes)?;
    }
}
