//! The pooling APIs (`/pooling`, `/classify`, `/score`, `/rerank` and their aliases): vLLM's
//! response shapes, `usage.prompt_tokens`, and what the metrics count.

mod common;

use common::*;
use http::{Method, StatusCode};
use serde_json::Value;
use weir_sim::SimConfig;

fn keys(v: &Value) -> Vec<&str> {
    v.as_object().unwrap().keys().map(String::as_str).collect()
}

/// vLLM's `UsageInfo` of a pooling answer of `n` prompt tokens.
fn assert_usage(v: &Value, n: u64) {
    let u = &v["usage"];
    assert_eq!(
        keys(u),
        [
            "prompt_tokens",
            "total_tokens",
            "completion_tokens",
            "prompt_tokens_details",
            "completion_tokens_details"
        ]
    );
    assert_eq!(
        (u["prompt_tokens"].as_u64(), u["total_tokens"].as_u64()),
        (Some(n), Some(n))
    );
    assert_eq!(u["completion_tokens"], 0);
}

#[tokio::test]
async fn pooling_and_classify() {
    let s = Server::start(SimConfig::fast()).await;
    let a = s
        .post(
            "/pooling",
            &[],
            r#"{"model":"tiny-llama","input":["weirs","and mills"]}"#,
        )
        .await;
    assert_eq!(
        (a.status, a.headers["content-type"].to_str().unwrap()),
        (StatusCode::OK, "application/json")
    );
    shape(&a.body, true);
    let v = a.json();
    assert_eq!(
        keys(&v),
        ["id", "object", "created", "model", "data", "usage"]
    );
    assert!(v["id"].as_str().unwrap().starts_with("pool-"));
    assert_eq!(keys(&v["data"][1]), ["index", "object", "data"]);
    assert_eq!(
        (&v["data"][1]["index"], &v["data"][1]["object"]),
        (&Value::from(1), &Value::from("pooling"))
    );
    // 1 + bytes/4 per input, as embeddings count.
    assert_usage(&v, (1 + 2) + (1 + 3));

    let a = s
        .post("/classify", &[], r#"{"input":"is this a weir?"}"#)
        .await;
    shape(&a.body, true);
    let v = a.json();
    assert!(v["id"].as_str().unwrap().starts_with("classify-"));
    let d = &v["data"][0];
    assert_eq!(keys(d), ["index", "label", "probs", "num_classes"]);
    let probs: Vec<f64> = d["probs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_f64().unwrap())
        .collect();
    assert!((probs.iter().sum::<f64>() - 1.0).abs() < 1e-9);
    assert_eq!(d["num_classes"], 2);
    assert_usage(&v, 1 + 4);
    // Chat-style input.
    let a = s
        .post(
            "/classify",
            &[],
            r#"{"messages":[{"role":"user","content":"hi"}]}"#,
        )
        .await;
    assert_usage(&a.json(), 2 + 4 + 1);
    s.shutdown().await;
}

#[tokio::test]
async fn score_on_both_paths() {
    let s = Server::start(SimConfig::fast()).await;
    for path in ["/score", "/v1/score"] {
        let body =
            r#"{"model":"tiny-llama","text_1":"weir","text_2":["a river","a dam","a mill"]}"#;
        let a = s.post(path, &[], body).await;
        assert_eq!(a.status, StatusCode::OK, "{path}");
        shape(&a.body, true);
        let v = a.json();
        assert!(v["id"].as_str().unwrap().starts_with("score-"));
        assert_eq!(
            keys(&v),
            ["id", "object", "created", "model", "data", "usage"]
        );
        let data = v["data"].as_array().unwrap();
        assert_eq!(data.len(), 3);
        assert_eq!(keys(&data[2]), ["index", "object", "score"]);
        assert!(
            data.iter()
                .all(|d| (0.0..1.0).contains(&d["score"].as_f64().unwrap()))
        );
        // Per pair: both texts' tokens and 3 special ones.
        assert_usage(&v, (1 + 2 + 3) + (1 + 2 + 3) + (1 + 2 + 3));
    }
    // N:N pairs, and the queries/documents names.
    let v = s
        .post(
            "/score",
            &[],
            r#"{"queries":["a","b"],"documents":["c","d"]}"#,
        )
        .await
        .json();
    assert_eq!(v["data"].as_array().unwrap().len(), 2);
    let a = s
        .post(
            "/score",
            &[],
            r#"{"text_1":["a","b"],"text_2":["c","d","e"]}"#,
        )
        .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    let a = s.post("/score", &[], r#"{"text_1":"a"}"#).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert!(a.body.contains("body.text_2"), "{}", a.body);
    s.shutdown().await;
}

#[tokio::test]
async fn rerank_on_every_path() {
    let s = Server::start(SimConfig::fast()).await;
    let body = r#"{"model":"tiny-llama","query":"weir","documents":["a river","a dam","a mill","a fish"],"top_n":3}"#;
    for path in ["/rerank", "/v1/rerank", "/v2/rerank"] {
        let a = s.post(path, &[], body).await;
        assert_eq!(a.status, StatusCode::OK, "{path}");
        shape(&a.body, true);
        let v = a.json();
        assert_eq!(keys(&v), ["id", "model", "usage", "results"]);
        assert_eq!(keys(&v["usage"]), ["prompt_tokens", "total_tokens"]);
        assert_eq!(v["usage"]["prompt_tokens"], 4 * (1 + 2 + 3));
        let results = v["results"].as_array().unwrap();
        assert_eq!(results.len(), 3);
        assert_eq!(keys(&results[0]), ["index", "document", "relevance_score"]);
        assert_eq!(results[0]["document"]["multi_modal"], Value::Null);
        let scores: Vec<f64> = results
            .iter()
            .map(|r| r["relevance_score"].as_f64().unwrap())
            .collect();
        assert!(scores.windows(2).all(|w| w[0] >= w[1]), "{scores:?}");
        let i = results[0]["index"].as_u64().unwrap() as usize;
        let docs = ["a river", "a dam", "a mill", "a fish"];
        assert_eq!(results[0]["document"]["text"], docs[i]);
    }
    s.shutdown().await;
}

#[tokio::test]
async fn pooling_errors_and_metrics() {
    let s = Server::start(SimConfig::fast()).await;
    let a = s
        .post(
            "/rerank",
            &[],
            r#"{"model":"nope","query":"q","documents":["d"]}"#,
        )
        .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert_eq!(a.json()["error"]["type"], "NotFoundError");
    let a = s.post("/pooling", &[], r#"{"model":"tiny-llama"}"#).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    let a = s.call(Method::GET, "/classify", &[], "").await;
    assert_eq!(a.status, StatusCode::METHOD_NOT_ALLOWED);
    let long = "x".repeat(4 * 600);
    let a = s
        .post("/classify", &[], &format!(r#"{{"input":"{long}"}}"#))
        .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    s.post("/classify", &[], r#"{"input":"abcd"}"#).await;
    s.post("/score", &[], r#"{"text_1":"abcd","text_2":"efgh"}"#)
        .await;
    let text = s.metrics().await;
    assert_eq!(metric(&text, "vllm:prompt_tokens_total{"), f64::from(2 + 5));
    assert_eq!(
        metric(
            &text,
            r#"vllm:request_success_total{engine="0",finished_reason="stop""#
        ),
        2.0
    );
    assert_eq!(metric(&text, "vllm:generation_tokens_total{"), 0.0);
    s.shutdown().await;
}
