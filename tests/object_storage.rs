//! The retail pipeline on a real S3-compatible server (moto, started by the test): dumps
//! read from one bucket, output published to another, read back; day two finds day one's
//! crosswalk there; faults are retried or reported, never half-published.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use common::*;
use datafusion::prelude::{ParquetReadOptions, SessionContext};

fn run_s3(server_endpoint: &str, input: &str, output: &str, extra: &[&str]) -> std::process::Output {
    let yaml = retail_yaml();
    let mut args = vec!["run", yaml.to_str().unwrap(), "--var", input, "--var", output, "--var", "run_date=2026-11-22"];
    args.extend_from_slice(extra);
    klantbeeld_env(&args, &S3Server::env(server_endpoint))
}

async fn count(server: &S3Server, bucket: &str, sql: &str, tables: &[&str]) -> i64 {
    let ctx = SessionContext::new();
    let url = url::Url::parse(&format!("s3://{bucket}")).unwrap();
    ctx.register_object_store(&url, server.bucket(bucket));
    for t in tables {
        ctx.register_parquet(*t, &format!("s3://{bucket}/retail/{t}/"), ParquetReadOptions::default()).await.unwrap();
    }
    let b = ctx.sql(sql).await.unwrap().collect().await.unwrap();
    datafusion::arrow::util::display::array_value_to_string(b[0].column(0), 0).unwrap().parse().unwrap()
}

#[tokio::test]
async fn retail_pipeline_reads_and_publishes_on_s3() {
    let server = S3Server::start();
    server.create_buckets(&["dumps", "golden"]);
    let dir = tempfile::tempdir().unwrap();
    generate(&dir.path().join("data"), 600, 8, true);
    server.upload("dumps", "2026-11-22", &dir.path().join("data/dumps")).await;
    server.upload("dumps", "2026-11-23", &dir.path().join("data/day2/dumps")).await;

    let out = run_s3(&server.endpoint(), "input=s3://dumps/2026-11-22", "output=s3://golden/retail", &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(server.get_text("golden", "retail/_SUCCESS").await.is_some());
    let manifest: serde_json::Value =
        serde_json::from_str(&server.get_text("golden", "retail/_manifest.json").await.unwrap()).unwrap();
    assert_eq!(manifest["inputs"]["crm"]["files"][0]["url"], "s3://dumps/2026-11-22/crm/contacts_1.csv");
    let customers = count(&server, "golden", "SELECT count(*) FROM customers", &["customers"]).await;
    assert_eq!(manifest["tables"]["customers"]["rows"].as_i64().unwrap(), customers);
    let enriched = count(&server, "golden", "SELECT count(*) FROM customers_enriched", &["customers_enriched"]).await;
    assert_eq!(enriched, customers);
    // Nothing is left in staging, and no lock.
    let day1_ids =
        count(&server, "golden", "SELECT count(DISTINCT customer_id) FROM customer_xref", &["customer_xref"]).await;
    assert!(server.get_text("golden", "retail/_lock").await.is_none());
    let staged = {
        use futures::TryStreamExt;
        let prefix = object_store::path::Path::from("retail/_staging");
        server.bucket("golden").list(Some(&prefix)).try_collect::<Vec<_>>().await.unwrap()
    };
    assert!(
        staged.is_empty(),
        "left in staging: {:?}",
        staged.iter().map(|o| o.location.to_string()).collect::<Vec<_>>()
    );
    let published = {
        use futures::TryStreamExt;
        let prefix = object_store::path::Path::from("retail/customers");
        server.bucket("golden").list(Some(&prefix)).try_collect::<Vec<_>>().await.unwrap()
    };
    assert!(!published.is_empty(), "the listing sees nothing: the staging check above would pass vacuously");

    // Day two finds day one's crosswalk at the output and keeps ids.
    let out = run_s3(&server.endpoint(), "input=s3://dumps/2026-11-23", "output=s3://golden/retail", &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let manifest: serde_json::Value =
        serde_json::from_str(&server.get_text("golden", "retail/_manifest.json").await.unwrap()).unwrap();
    assert_eq!(manifest["previous_crosswalk"], "s3://golden/retail/customer_xref");
    let kept = count(
        &server,
        "golden",
        "SELECT count(*) FROM customer_changes WHERE change IN ('new', 'merged_into', 'split_from')",
        &["customer_changes"],
    )
    .await;
    assert!(kept < day1_ids / 5, "day two changed {kept} of {day1_ids} ids");
    // No file of day one's tables is left beside day two's.
    let files = count(&server, "golden", "SELECT count(*) FROM customers", &["customers"]).await;
    assert_eq!(manifest["tables"]["customers"]["rows"].as_i64().unwrap(), files);
}

/// A TCP proxy in front of the S3 server that can be switched to answer 503 and to cut
/// open connections, like a load balancer in trouble.
struct FaultyProxy {
    port: u16,
    failing: Arc<AtomicBool>,
    /// Requests answered 503 so far.
    refused: Arc<AtomicUsize>,
}

impl FaultyProxy {
    fn start(upstream: u16) -> FaultyProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let failing = Arc::new(AtomicBool::new(false));
        let refused = Arc::new(AtomicUsize::new(0));
        let (flag, count) = (failing.clone(), refused.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let (flag, count) = (flag.clone(), count.clone());
                std::thread::spawn(move || serve(client, upstream, flag, count));
            }
        });
        FaultyProxy { port, failing, refused }
    }

    fn refused(&self) -> usize {
        self.refused.load(Ordering::SeqCst)
    }

    fn set_failing(&self, failing: bool) {
        self.failing.store(failing, Ordering::SeqCst);
    }
}

fn serve(mut client: TcpStream, upstream: u16, failing: Arc<AtomicBool>, refused: Arc<AtomicUsize>) {
    if failing.load(Ordering::SeqCst) {
        let mut buf = [0u8; 4096];
        let _ = client.read(&mut buf);
        refused.fetch_add(1, Ordering::SeqCst);
        let _ = client.write_all(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        return;
    }
    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else { return };
    let pipe = |mut from: TcpStream, mut to: TcpStream, failing: Arc<AtomicBool>| {
        let mut buf = [0u8; 65536];
        loop {
            // A connection that was open when trouble started is cut.
            if failing.load(Ordering::SeqCst) {
                let _ = to.shutdown(std::net::Shutdown::Both);
                return;
            }
            match from.read(&mut buf) {
                Ok(0) | Err(_) => {
                    let _ = to.shutdown(std::net::Shutdown::Write);
                    return;
                }
                Ok(n) => {
                    if to.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            }
        }
    };
    let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
    let f2 = failing.clone();
    let up = std::thread::spawn(move || pipe(c2, s2, f2));
    pipe(server, client, failing);
    let _ = up.join();
}

/// Waits until a run holds the lock of `golden/retail` (seen through the healthy endpoint).
async fn wait_for_lock(server: &S3Server) {
    let started = std::time::Instant::now();
    while server.get_text("golden", "retail/_lock").await.is_none() {
        assert!(started.elapsed() < std::time::Duration::from_secs(60), "the run never took the lock");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

#[tokio::test]
async fn transient_faults_are_retried_and_a_dead_server_fails_cleanly() {
    let server = S3Server::start();
    server.create_buckets(&["dumps", "golden"]);
    let dir = tempfile::tempdir().unwrap();
    generate(&dir.path().join("data"), 4000, 9, false);
    server.upload("dumps", "d", &dir.path().join("data/dumps")).await;
    // A first run publishes through a healthy path.
    let out = run_s3(&server.endpoint(), "input=s3://dumps/d", "output=s3://golden/retail", &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let before = server.get_text("golden", "retail/_manifest.json").await.unwrap();

    // Trouble for two seconds in the middle of a run (from the moment it holds the
    // output's lock, before it reads any input): retries carry it through.
    let proxy = FaultyProxy::start(server.port);
    let endpoint = format!("http://127.0.0.1:{}", proxy.port);
    let yaml = retail_yaml();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_klantbeeld"))
        .args([
            "-q",
            "run",
            yaml.to_str().unwrap(),
            "--var",
            "input=s3://dumps/d",
            "--var",
            "output=s3://golden/retail",
        ])
        .envs(S3Server::env(&endpoint))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_lock(&server).await;
    proxy.set_failing(true);
    std::thread::sleep(std::time::Duration::from_millis(2000));
    proxy.set_failing(false);
    let out = child.wait_with_output().unwrap();
    assert!(proxy.refused() > 0, "no request of the run met the outage");
    assert!(out.status.success(), "a two-second outage must be retried: {}", stderr(&out));
    let after = server.get_text("golden", "retail/_manifest.json").await.unwrap();
    assert_ne!(before, after);
    assert!(server.get_text("golden", "retail/_SUCCESS").await.is_some());

    // The server dies for good once the run holds the output's lock (it takes it before
    // reading any input, so the run is far from its commit point): the run fails with a
    // clear message, the output stays as it was, and the lock stays behind.
    let p = pipeline_variant(dir.path(), |t| {
        t.replace("engine:\n", "storage:\n  max_retries: 2\n  initial_backoff_ms: 50\n  retry_timeout_s: 3\n  request_timeout_s: 5\nengine:\n")
    });
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_klantbeeld"))
        .args(["run", p.to_str().unwrap(), "--var", "input=s3://dumps/d", "--var", "output=s3://golden/retail"])
        .env("KLANTBEELD_LOG", "error")
        .envs(S3Server::env(&endpoint))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_lock(&server).await;
    let refused_before = proxy.refused();
    proxy.set_failing(true);
    let out = child.wait_with_output().unwrap();
    assert!(proxy.refused() > refused_before, "no request of the run met the dead server");
    assert!(!out.status.success());
    let err = stderr(&out);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("503") || err.contains("retries") || err.contains("error sending request"), "{err}");
    // Through the healthy endpoint: the last published output is whole and unchanged.
    assert_eq!(
        server.get_text("golden", "retail/_manifest.json").await.unwrap(),
        after,
        "a failed run replaced the output"
    );
    assert!(server.get_text("golden", "retail/_SUCCESS").await.is_some());
    // The failed run could not remove its lock from a dead server: the next run says so,
    // and an operator who knows that run is dead takes the lock over.
    assert!(server.get_text("golden", "retail/_lock").await.is_some(), "the dead server took the lock's removal");
    let out = run_s3(&server.endpoint(), "input=s3://dumps/d", "output=s3://golden/retail", &[]);
    assert!(stderr(&out).contains("another klantbeeld run is publishing") && stderr(&out).contains("--break-lock"));
    assert_eq!(server.get_text("golden", "retail/_manifest.json").await.unwrap(), after);
    let out = run_s3(&server.endpoint(), "input=s3://dumps/d", "output=s3://golden/retail", &["--break-lock"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(server.get_text("golden", "retail/_SUCCESS").await.is_some());
    assert_ne!(server.get_text("golden", "retail/_manifest.json").await.unwrap(), after);
}

#[tokio::test]
async fn two_runs_on_one_output_cannot_mix() {
    let server = S3Server::start();
    server.create_buckets(&["dumps", "golden"]);
    let dir = tempfile::tempdir().unwrap();
    generate(&dir.path().join("data"), 3000, 10, false);
    server.upload("dumps", "d", &dir.path().join("data/dumps")).await;
    let yaml = retail_yaml();
    let spawn = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_klantbeeld"))
            .args([
                "-q",
                "run",
                yaml.to_str().unwrap(),
                "--var",
                "input=s3://dumps/d",
                "--var",
                "output=s3://golden/retail",
            ])
            .envs(S3Server::env(&server.endpoint()))
            .stderr(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    // The second run starts while the first holds the output's lock (it takes the lock
    // before reading any input, and keeps it until it has published).
    let first = spawn();
    wait_for_lock(&server).await;
    let second = spawn().wait_with_output().unwrap();
    let first = first.wait_with_output().unwrap();
    assert!(first.status.success(), "{}", stderr(&first));
    assert_eq!(second.status.code(), Some(1), "{}", stderr(&second));
    assert!(stderr(&second).contains("another klantbeeld run is publishing to this output"), "{}", stderr(&second));
    // The output is the first run's: its manifest, whose row counts match the tables.
    let manifest: serde_json::Value =
        serde_json::from_str(&server.get_text("golden", "retail/_manifest.json").await.unwrap()).unwrap();
    let xref = count(&server, "golden", "SELECT count(*) FROM customer_xref", &["customer_xref"]).await;
    assert_eq!(manifest["tables"]["customer_xref"]["rows"].as_i64().unwrap(), xref);
    let run_id = manifest["run_id"].as_str().unwrap();
    assert!(String::from_utf8_lossy(&first.stdout).contains(&format!("published run {run_id}")));
}

/// Puts a `_lock` object as a run that renewed it `silent_s` seconds ago would have left.
async fn plant_lock(server: &S3Server, silent_s: i64) {
    use object_store::ObjectStoreExt;
    let at = chrono::Utc::now() - chrono::Duration::seconds(silent_s);
    let body = serde_json::json!({"run_id": "20261122T010000Z-dead", "since": at, "heartbeat": at});
    let key = object_store::path::Path::from("retail/_lock");
    server.bucket("golden").put(&key, serde_json::to_vec(&body).unwrap().into()).await.unwrap();
}

#[tokio::test]
async fn a_lock_nobody_renews_is_taken_over_and_a_live_one_is_respected() {
    let server = S3Server::start();
    server.create_buckets(&["dumps", "golden"]);
    let dir = tempfile::tempdir().unwrap();
    generate(&dir.path().join("data"), 300, 12, false);
    server.upload("dumps", "d", &dir.path().join("data/dumps")).await;
    // A run that renewed its lock a few seconds ago is alive: refused, lock kept.
    plant_lock(&server, 5).await;
    let out = run_s3(&server.endpoint(), "input=s3://dumps/d", "output=s3://golden/retail", &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("another klantbeeld run is publishing"), "{}", stderr(&out));
    assert!(server.get_text("golden", "retail/_lock").await.unwrap().contains("-dead"));
    assert!(server.get_text("golden", "retail/_SUCCESS").await.is_none());
    // Killed during publish ten minutes ago: no heartbeat since, so the next nightly run
    // takes the lock over without --break-lock, publishes, and frees it.
    plant_lock(&server, 600).await;
    let out = run_s3(&server.endpoint(), "input=s3://dumps/d", "output=s3://golden/retail", &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(server.get_text("golden", "retail/_SUCCESS").await.is_some());
    assert!(server.get_text("golden", "retail/_lock").await.is_none());
}

#[tokio::test]
async fn an_output_that_is_not_ours_or_not_there_is_refused_before_any_work() {
    use object_store::ObjectStoreExt;
    let server = S3Server::start();
    server.create_buckets(&["dumps", "golden"]);
    let dir = tempfile::tempdir().unwrap();
    generate(&dir.path().join("data"), 150, 13, false);
    server.upload("dumps", "d", &dir.path().join("data/dumps")).await;
    let out = run_s3(&server.endpoint(), "input=s3://dumps/d", "output=s3://nosuchbucket/retail", &[]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("bucket `s3://nosuchbucket/` does not exist"), "{}", stderr(&out));
    // Someone else's objects under the output prefix stay as they are.
    let key = object_store::path::Path::from("retail/exports/2026.csv");
    server.bucket("golden").put(&key, "a;b\n".into()).await.unwrap();
    let out = run_s3(&server.endpoint(), "input=s3://dumps/d", "output=s3://golden/retail", &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("`exports`") && stderr(&out).contains("nothing was touched"), "{}", stderr(&out));
    assert_eq!(server.get_text("golden", "retail/exports/2026.csv").await.as_deref(), Some("a;b\n"));
    assert!(server.get_text("golden", "retail/_lock").await.is_none());
}
