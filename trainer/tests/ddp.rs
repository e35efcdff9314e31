//! `train --devices` and `train --num-nodes` end to end on the fixture X-rays (CPU only): two
//! local devices train, checkpoint, validate, report and resume; two machines (two processes on
//! 127.0.0.1) through `trainer orchestrator` end with the same model as each other, after the same
//! training losses as two local devices.

mod common;

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{dataset, temp, tiny_run_args, trainer};

fn train(data: &Path, run: &Path, extra: &[&str]) -> Output {
    let mut args: Vec<String> = vec!["train".into()];
    args.extend(tiny_run_args(data, run));
    args.extend(
        ["--augment-p", "0", "--quiet", "--workers", "1"]
            .iter()
            .chain(extra)
            .map(|s| s.to_string()),
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    trainer(&args)
}

fn assert_ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn committed_epoch(run: &Path) -> u64 {
    let text = std::fs::read_to_string(run.join("state.json")).unwrap();
    let state: serde_json::Value = serde_json::from_str(&text).unwrap();
    state["epoch"].as_u64().unwrap()
}

#[test]
fn two_local_devices_train_checkpoint_validate_and_resume() {
    let data = dataset("ddp-local");
    let run = temp("ddp-local-run");
    let out = train(&data, &run, &["--epochs", "1", "--devices", "cpu*2"]);
    assert_ok(&out, "train --devices cpu*2");
    assert!(String::from_utf8_lossy(&out.stderr).contains("data-parallel over 2 device(s)"));
    assert_eq!(committed_epoch(&run), 1);
    for file in ["report.json", "epoch-1.bpk", "metrics.csv"] {
        assert!(run.join(file).exists(), "{file}");
    }
    let resume = trainer(&[
        "train",
        "--resume",
        run.to_str().unwrap(),
        "--epochs",
        "2",
        "--devices",
        "cpu,cpu",
        "--quiet",
    ]);
    assert_ok(&resume, "--resume with --devices");
    assert_eq!(committed_epoch(&run), 2);
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("report.json")).unwrap()).unwrap();
    assert!(report.to_string().contains("auc"), "{report}");
    let bad = trainer(&["train", "--data", "x", "--devices", "tpu"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--devices"));
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap()
}

/// Wait for `child` (at most two minutes); its stderr.
fn wait(mut child: Child, what: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(120);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{what} did not finish within 2 minutes");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{what}: {stderr}");
    stderr
}

/// Ends the orchestrator when the test ends, passed or not.
struct Orchestrator(Child);

impl Drop for Orchestrator {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn two_machines_through_the_orchestrator_match_two_local_devices() {
    let data = dataset("ddp-nodes");
    let local = temp("ddp-nodes-local");
    assert_ok(
        &train(&data, &local, &["--epochs", "1", "--devices", "cpu*2"]),
        "local",
    );
    let port = free_port();
    let _orchestrator = Orchestrator(
        Command::new(env!("CARGO_BIN_EXE_trainer"))
            .args(["orchestrator", "--port", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    std::thread::sleep(Duration::from_millis(500));
    let runs = [temp("ddp-node0"), temp("ddp-node1")];
    let nodes: Vec<Child> = (0..2)
        .map(|rank| {
            let node_port = free_port().to_string();
            let mut args = vec!["train".to_string()];
            args.extend(tiny_run_args(&data, &runs[rank]));
            args.extend(
                [
                    "--augment-p",
                    "0",
                    "--quiet",
                    "--workers",
                    "1",
                    "--epochs",
                    "1",
                    "--num-nodes",
                    "2",
                    "--node-rank",
                    &rank.to_string(),
                    "--global-address",
                    &format!("ws://127.0.0.1:{port}"),
                    "--node-address",
                    &format!("ws://127.0.0.1:{node_port}"),
                    "--data-service-port",
                    &node_port,
                ]
                .map(String::from),
            );
            Command::new(env!("CARGO_BIN_EXE_trainer"))
                .args(&args)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for (rank, node) in nodes.into_iter().enumerate() {
        let stderr = wait(node, &format!("node {rank}"));
        assert!(stderr.contains(&format!("on node {rank} of 2")), "{stderr}");
    }
    // The epoch's figures without its duration: the same on both machines (same model after the
    // epoch), and the same training loss as on two local devices (same shards, same sums).
    let figures = |run: &Path| -> Vec<String> {
        let text = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
        let row = text.lines().nth(1).expect("a metrics row").to_string();
        row.split(',').take(10).map(String::from).collect()
    };
    assert_eq!(figures(&runs[0]), figures(&runs[1]), "the machines differ");
    assert_eq!(
        figures(&runs[0])[1],
        figures(&local)[1],
        "two machines and two local devices trained differently"
    );
}
