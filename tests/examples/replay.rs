//! Replays the recorded telemetry corpus (`tests/corpus/`) through the whole
//! incident chain offline and prints a confusion table: for each scenario, the
//! runs it opened, the top-1 hypothesis, the verdict, against what the recording
//! says happened; then top-1 accuracy per fault class, verdicts right, runs
//! opened with no fault, faults with no run, and impactful steps executed
//! without approval.
//!
//! Run: `cargo run -p tether-e2e --example replay [-- tests/corpus] [--check]`.
//! `--check` exits 1 unless every scenario's expectation holds.
//!
//! The corpus: `corpus.json` lists the scenarios; each one's `.jsonl` holds the
//! observation messages the real agent sent during a real fault on a real host
//! (recorded by `tether-local` with `TETHER_LOCAL_RECORD_OBSERVATIONS`, see
//! `tests/tests/scenarios.rs`). The operator approves every plan at once; the
//! agent's actions finish at `fixed_at_ms`, the moment the real agent finished
//! them, so the windows after it show the real effect. The chain, its rules,
//! catalogs and policy are the real ones (`tether_core`), over in-memory ports.

use std::collections::BTreeMap;
use std::path::PathBuf;
use tether_e2e::replay::{load, replay, Corpus};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let check = args.iter().any(|a| a == "--check");
    let dir = args
        .iter()
        .find(|a| !a.starts_with("--"))
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("corpus"));
    let corpus: Corpus = serde_json::from_str(
        &std::fs::read_to_string(dir.join("corpus.json")).expect("corpus.json"),
    )
    .expect("corpus.json parses");
    println!(
        "| scenario | fault | windows | runs opened | top-1 hypothesis | verdict | as recorded |"
    );
    println!("|---|---|---|---|---|---|---|");
    let mut class_total: BTreeMap<String, (u32, u32)> = BTreeMap::new();
    let (mut verdicts_right, mut verdicts_total) = (0, 0);
    let (mut no_fault_runs, mut missed, mut unapproved, mut failures) = (0, 0, 0, 0);
    let mut all_ok = true;
    let mut reasons = Vec::new();
    for s in &corpus.scenarios {
        let messages = load(&dir.join(&s.file));
        let windows: usize = messages.iter().map(|m| m.windows.len()).sum();
        let out = replay(s, &messages).await.unwrap_or_else(|e| {
            eprintln!("{}: {e}", s.name);
            std::process::exit(2)
        });
        failures += out.failures;
        unapproved += out.unapproved_impactful;
        let mut ok = out.unapproved_impactful == 0;
        match &s.fault {
            None => {
                no_fault_runs += out.families.len();
                ok &= out.families.is_empty();
            }
            Some(fault) => {
                let opened = out.families.iter().any(|f| f == fault);
                if !opened {
                    missed += 1;
                }
                let e = class_total.entry(fault.clone()).or_default();
                e.1 += 1;
                let top_right = s.hypothesis.is_none() || out.top1 == s.hypothesis;
                if opened && top_right {
                    e.0 += 1;
                }
                ok &= opened && top_right;
                if let Some(v) = &s.verdict {
                    verdicts_total += 1;
                    if out.verdict.as_ref() == Some(v) {
                        verdicts_right += 1;
                    } else {
                        ok = false;
                    }
                }
            }
        }
        all_ok &= ok;
        if let Some(why) = &out.why {
            reasons.push(format!("{}: {why}", s.name));
        }
        println!(
            "| {} | {} | {windows} | {} | {} | {} | {} |",
            s.name,
            s.fault.as_deref().unwrap_or("none"),
            if out.families.is_empty() {
                "none".to_owned()
            } else {
                out.families.join(", ")
            },
            out.top1.as_deref().unwrap_or("-"),
            out.verdict.as_deref().unwrap_or("-"),
            if ok { "yes" } else { "NO" }
        );
    }
    println!();
    for r in &reasons {
        println!("- {r}");
    }
    println!();
    let right: u32 = class_total.values().map(|(r, _)| r).sum();
    let classes = class_total.len();
    let classes_right = class_total.values().filter(|(r, t)| r == t).count();
    println!(
        "top-1 hypothesis right: {right} of {} fault recordings; {classes_right} of {classes} fault classes",
        class_total.values().map(|(_, t)| t).sum::<u32>()
    );
    println!("verdicts right: {verdicts_right} of {verdicts_total}");
    println!("runs opened in no-fault recordings: {no_fault_runs}");
    println!("faults with no run: {missed}");
    println!("impactful steps executed without approval: {unapproved}");
    println!("role failures during replay: {failures}");
    if check && !all_ok {
        std::process::exit(1);
    }
}
