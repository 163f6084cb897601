//! `weir bench --api ...` against `weir sim` on 127.0.0.1:0: each API's run reports the
//! token counts the simulator was asked for and a TTFT as long as the simulator's.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use weir_bench::{Api, BenchArgs, Load, Report, run_load};
use weir_sim::SimConfig;

const REQUESTS: usize = 6;
const MAX_TOKENS: u32 = 9;

struct Sim {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

async fn sim() -> Sim {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let config = SimConfig {
        ttft: Duration::from_millis(40),
        itl: Duration::from_millis(3),
        ..SimConfig::fast()
    };
    let task = tokio::spawn(weir_sim::serve(listener, config, async move {
        let _ = stopped.await;
    }));
    Sim { addr, stop, task }
}

impl Sim {
    async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap().unwrap();
    }
}

fn args(sim: &Sim, api: Api) -> BenchArgs {
    BenchArgs {
        url: format!("http://{}", sim.addr),
        api,
        prompt_tokens: 24,
        max_tokens: MAX_TOKENS,
        requests: Some(REQUESTS),
        duration: Duration::from_secs(30),
        ..BenchArgs::default()
    }
}

async fn run(args: &BenchArgs) -> Report {
    let r = tokio::time::timeout(Duration::from_secs(30), run_load(args, Load::Closed(3)))
        .await
        .expect("the run took too long")
        .unwrap();
    assert_eq!((r.requests, r.errors), (REQUESTS, 0), "{:?}", args.api);
    r
}

/// A streamed run: every token counted, one TTFT per request, one ITL per gap.
fn assert_streamed(r: &Report, api: Api) {
    assert_eq!(
        r.output_tokens,
        (REQUESTS as u64) * u64::from(MAX_TOKENS),
        "{api:?}"
    );
    assert_eq!(r.ttft.count, REQUESTS, "{api:?}");
    assert!(
        r.ttft.p50 >= 0.04 && r.ttft.max < 5.0,
        "{api:?} TTFT {:?}",
        r.ttft
    );
    assert_eq!(r.itl.count, REQUESTS * (MAX_TOKENS as usize - 1), "{api:?}");
    assert_eq!(r.tpot.count, REQUESTS, "{api:?}");
    assert!(r.e2e.p50 >= r.ttft.p50, "{api:?}");
}

#[tokio::test]
async fn every_generation_api_is_measured() {
    let s = sim().await;
    let mut inputs = Vec::new();
    for api in [Api::Chat, Api::Completions, Api::Responses, Api::Messages] {
        let r = run(&args(&s, api)).await;
        assert_streamed(&r, api);
        assert!(r.input_tokens > 0, "{api:?}");
        inputs.push(r.input_tokens);
    }
    // One user message of the same prompt: the same prompt tokens on the chat-like APIs
    // (Messages counts its cache reads back in, the prompt being cached by then).
    assert_eq!((inputs[0], inputs[0]), (inputs[2], inputs[3]));
    s.stop().await;
}

#[tokio::test]
async fn non_streamed_runs_count_tokens_without_a_ttft() {
    let s = sim().await;
    for api in [Api::Chat, Api::Responses, Api::Messages] {
        let a = BenchArgs {
            no_stream: true,
            ..args(&s, api)
        };
        let r = run(&a).await;
        assert_eq!(
            r.output_tokens,
            (REQUESTS as u64) * u64::from(MAX_TOKENS),
            "{api:?}"
        );
        assert_eq!((r.ttft.count, r.itl.count), (0, 0), "{api:?}");
        assert!(r.input_tokens > 0, "{api:?}");
    }
    let r = run(&args(&s, Api::Embeddings)).await;
    assert_eq!((r.output_tokens, r.ttft.count), (0, 0));
    // The simulator counts an embeddings input as 1 + bytes / 4 tokens.
    let words = [
        "weir", "river", "flow", "stone", "water", "gate", "level", "bank",
    ];
    let prompt: Vec<&str> = (0..24).map(|i| words[i % words.len()]).collect();
    let tokens = 1 + prompt.join(" ").len().div_ceil(4) as u64;
    assert_eq!(r.input_tokens, REQUESTS as u64 * tokens);
    assert_eq!(r.e2e.count, REQUESTS);
    s.stop().await;
}

#[tokio::test]
async fn reasoning_and_tool_call_deltas_are_tokens() {
    let s = sim().await;
    for api in [Api::Chat, Api::Responses, Api::Messages] {
        let a = BenchArgs {
            headers: vec!["x-sim-reasoning: 4".into(), "x-sim-tool-call: 1".into()],
            ..args(&s, api)
        };
        assert_streamed(&run(&a).await, api);
    }
    s.stop().await;
}

#[tokio::test]
async fn completions_flag_is_an_alias_and_errors_count_by_cause() {
    let s = sim().await;
    let a = BenchArgs {
        completions: true,
        ..args(&s, Api::Chat)
    };
    assert_eq!(a.effective_api(), Api::Completions);
    assert_streamed(&run(&a).await, Api::Completions);
    // An unknown model: every request an error, on the Anthropic-shaped route too.
    for api in [Api::Messages, Api::Responses, Api::Embeddings] {
        let a = BenchArgs {
            model: Some("nope".into()),
            ..args(&s, api)
        };
        let r = run_load(&a, Load::Closed(2)).await.unwrap();
        assert_eq!(r.errors, REQUESTS, "{api:?}");
        // vLLM's message, whichever shape the route answers in.
        assert_eq!(r.errors_by_cause.len(), 1, "{api:?}");
        assert_eq!(
            r.errors_by_cause[0].cause,
            "HTTP 404: The model `nope` does not exist. Valid aliases: tiny-llama.",
            "{api:?}"
        );
    }
    s.stop().await;
}
