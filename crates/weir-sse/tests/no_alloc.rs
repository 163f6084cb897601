//! The common token event is classified (and parsed, when it lies whole in a chunk) without
//! allocating, on every API. A test binary of its own, whose allocator counts the
//! allocations of the thread that asks (the harness's own threads allocate meanwhile).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use weir_sse::{Api, SseParser, classify, classify_event};

struct Counting;

thread_local! {
    // Const-initialised and without a destructor: reading it never allocates.
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

fn count() {
    ALLOCATIONS.with(|n| n.set(n.get() + 1));
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations `f` made.
fn allocations(f: impl FnOnce()) -> usize {
    let before = ALLOCATIONS.with(Cell::get);
    f();
    ALLOCATIONS.with(Cell::get) - before
}

#[test]
fn token_events_are_classified_without_allocating() {
    // vLLM's own token chunk (chat_stream_usage_prompt_details.sse) and its usage-less peers.
    let chat = br#"{"id":"chatcmpl-9fd6ad4618da3843","object":"chat.completion.chunk","created":1796178192,"model":"tiny-llama","choices":[{"index":0,"delta":{"content":" me"},"logprobs":null,"finish_reason":null,"token_ids":null}]}"#;
    let completion = br#"{"id":"cmpl-1","object":"text_completion","created":1,"model":"tiny-llama","choices":[{"index":0,"text":"ab","logprobs":null,"finish_reason":null}]}"#;
    let text = br#"{"content_index":0,"delta":"stance","item_id":"msg_bdabd637f5aafd76","logprobs":[],"output_index":0,"sequence_number":5,"type":"response.output_text.delta"}"#;
    let block =
        br#"{"type":"content_block_delta","delta":{"type":"text_delta","text":"bject"},"index":0}"#;
    let counts = [
        allocations(|| assert!(classify(chat).answer)),
        allocations(|| assert!(classify_event(Api::Chat, None, chat).answer)),
        allocations(|| assert!(classify_event(Api::Completions, None, completion).answer)),
        allocations(|| {
            let name = Some(&b"response.output_text.delta"[..]);
            assert!(classify_event(Api::Responses, name, text).answer);
        }),
        allocations(|| {
            let name = Some(&b"content_block_delta"[..]);
            assert!(classify_event(Api::Messages, name, block).answer);
        }),
    ];
    assert_eq!(counts, [0; 5]);

    let stream = b"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"delta\":{\"type\":\"text_delta\",\"text\":\"x\"},\"index\":0}\n\n";
    let mut p = SseParser::default();
    let mut answers = 0;
    let n = allocations(|| {
        p.feed(stream, |e| {
            answers += usize::from(classify_event(Api::Messages, e.name, e.data).answer);
        })
    });
    assert_eq!((n, answers), (0, 1));
}
