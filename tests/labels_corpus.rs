//! The labels-CSV corpus (tests/inputs/labels/, expected outcomes in its expected.json): each file
//! gives the labelled set it should, or an error that says what to change, never a panic.

use std::path::Path;

use cxr::labels::recognise;

/// The dropped files every corpus CSV is matched against (it sits in `d/`).
const DROPPED: [&str; 5] = [
    "d/a.png",
    "d/b.png",
    "d/c.png",
    "d/img/a.png",
    "d/img/b.png",
];

#[test]
fn every_labels_csv_in_the_corpus_gives_its_expected_outcome() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/inputs/labels");
    let expected: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(dir.join("expected.json")).unwrap()).unwrap();
    let listed = std::fs::read_dir(&dir).unwrap().filter(|e| {
        e.as_ref()
            .unwrap()
            .path()
            .extension()
            .is_some_and(|x| x == "csv")
    });
    assert_eq!(
        listed.count(),
        expected.len(),
        "every CSV has an expected outcome"
    );
    for case in expected {
        let file = case["file"].as_str().unwrap();
        let bytes = std::fs::read(dir.join(file)).unwrap();
        // The page reads the CSV as text (invalid UTF-8 becomes U+FFFD), as here.
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let csv_name = format!("d/{file}");
        let mut names: Vec<String> = DROPPED.iter().map(|s| s.to_string()).collect();
        names.push(csv_name.clone());
        let outcome = recognise(&names, &[(csv_name, text)]);
        match case["expect"].as_str().unwrap() {
            "labels" => {
                let set = outcome.unwrap_or_else(|e| panic!("{file}: {e}")).unwrap();
                assert_eq!(
                    set.items.len() as u64,
                    case["items"].as_u64().unwrap(),
                    "{file}"
                );
                assert_eq!(
                    set.positives as u64,
                    case["positives"].as_u64().unwrap(),
                    "{file}"
                );
                let excluded = case["excluded"].as_u64().unwrap_or(0);
                assert_eq!(set.excluded as u64, excluded, "{file}");
            }
            "error" => {
                let message = outcome.expect_err(file).to_string();
                let want = case["message"].as_str().unwrap();
                assert!(message.contains(want), "{file}: `{message}` lacks `{want}`");
                assert!(
                    message.starts_with(&format!("d/{file}")),
                    "{file}: {message}"
                );
            }
            _ => assert_eq!(outcome, Ok(None), "{file}"),
        }
    }
}
