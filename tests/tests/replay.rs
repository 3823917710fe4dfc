//! The recorded corpus (`tests/corpus/`) replayed through today's rules: every
//! recording must still reach what was recorded (the run it opened, its top
//! hypothesis, its verdict, no run on a healthy host, no impactful step without
//! approval). A rule change that breaks a recorded diagnosis fails here, without
//! producing the fault again. Offline: no emulator, no root.

use std::path::Path;
use tether_e2e::replay::{load, replay, Corpus};

#[tokio::test]
async fn the_recorded_corpus_replays_as_recorded() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let corpus: Corpus = serde_json::from_str(
        &std::fs::read_to_string(dir.join("corpus.json")).expect("tests/corpus/corpus.json"),
    )
    .expect("corpus.json parses");
    assert!(
        corpus.scenarios.iter().any(|s| s.fault.is_none())
            && corpus.scenarios.iter().any(|s| s.fault.is_some()),
        "the corpus holds a no-fault recording and at least one fault"
    );
    for s in &corpus.scenarios {
        let messages = load(&dir.join(&s.file));
        assert!(!messages.is_empty(), "{}: empty recording", s.name);
        let out = replay(s, &messages).await.expect("replay");
        match &s.fault {
            None => assert!(
                out.families.is_empty(),
                "{}: runs opened on a healthy host: {:?}",
                s.name,
                out.families
            ),
            Some(f) => assert!(out.families.contains(f), "{}: {:?}", s.name, out.families),
        }
        assert_eq!(out.top1, s.hypothesis, "{}: top-1 hypothesis", s.name);
        assert_eq!(out.verdict, s.verdict, "{}: verdict", s.name);
        assert_eq!(out.unapproved_impactful, 0, "{}", s.name);
        assert_eq!(out.failures, 0, "{}: role failures in replay", s.name);
    }
}
