use std::collections::HashSet;

use super::find::{Pair, link};
use super::*;

fn items(n: usize) -> Vec<Item> {
    (0..n)
        .map(|i| Item {
            file: format!(
                "{}/{i}.png",
                if i % 2 == 0 { "effusion" } else { "nofinding" }
            ),
            label: u8::from(i % 2 == 0),
            patient: None,
        })
        .collect()
}

fn groups_file(groups: Vec<Vec<String>>) -> GroupsFile {
    GroupsFile {
        method: "test".into(),
        threshold: 3.0,
        images: 0,
        groups,
    }
}

#[test]
fn bad_groups_files_are_clear_errors() {
    let err = GroupsFile::parse("[1, 2]").unwrap_err();
    assert!(format!("{err:#}").contains("not a groups file"), "{err:#}");
    let one = r#"{"method": "m", "threshold": 1, "images": 2, "groups": [["a.png"]]}"#;
    let err = GroupsFile::parse(one).unwrap_err();
    assert!(err.to_string().contains("at least two"), "{err}");
    let twice =
        r#"{"method": "m", "threshold": 1, "images": 3, "groups": [["a", "b"], ["c", "a"]]}"#;
    let err = GroupsFile::parse(twice).unwrap_err();
    assert!(err.to_string().contains("a is listed twice"), "{err}");
    let fine = r#"{"method": "m", "threshold": 1, "images": 3, "groups": [["a", "b"]]}"#;
    assert_eq!(GroupsFile::parse(fine).unwrap().grouped_images(), 2);
}

#[test]
fn a_file_not_in_the_data_is_an_error() {
    let mut all = items(4);
    let groups = groups_file(vec![vec![
        "effusion/0.png".into(),
        "effusion/99.png".into(),
    ]]);
    let err = apply(&mut all, &groups).unwrap_err();
    assert!(err.to_string().contains("effusion/99.png"), "{err}");
}

#[test]
fn grouped_images_share_one_key_and_patients_merge() {
    let mut all = items(8);
    all[5].patient = Some("p".into());
    all[7].patient = Some("p".into());
    all[6].patient = Some("q".into());
    let groups = groups_file(vec![
        vec![
            all[1].file.clone(),
            all[2].file.clone(),
            all[3].file.clone(),
        ],
        vec![all[4].file.clone(), all[5].file.clone()],
    ]);
    apply(&mut all, &groups).unwrap();
    let key = |i: usize| all[i].patient.clone();
    assert_eq!(key(1), Some("group:nofinding/1.png".into()));
    assert!(key(2) == key(1) && key(3) == key(1));
    // 4 and 5 are grouped, and 5 shares patient "p" with 7: one patient of three images.
    assert!(key(4) == key(5) && key(5) == key(7) && key(4) != key(1));
    assert_eq!(
        key(0),
        None,
        "an image in no group keeps its (absent) patient"
    );
    assert_eq!(key(6), Some("q".into()));
}

#[test]
fn linking_takes_pairs_up_to_the_threshold_transitively() {
    let all = items(6);
    let pair = |a, b, distance: f64| Pair { a, b, distance };
    let pairs = [
        pair(0, 1, 1.0),
        pair(1, 2, 2.0),
        pair(3, 4, 2.0),
        pair(4, 5, 9.0),
    ];
    let groups = link(&all, &pairs, 2.0);
    assert_eq!(groups.len(), 2);
    assert_eq!(
        groups[0],
        ["effusion/0.png", "nofinding/1.png", "effusion/2.png"]
    );
    assert_eq!(groups[1], ["nofinding/3.png", "effusion/4.png"]);
    assert!(link(&all, &pairs, 0.0).is_empty());
}

#[test]
fn groups_are_never_split_by_split_or_folds() {
    let mut all = items(120);
    let groups: Vec<Vec<String>> = (0..20)
        .map(|g| (0..4).map(|k| all[g * 6 + k].file.clone()).collect())
        .collect();
    apply(&mut all, &groups_file(groups.clone())).unwrap();
    for seed in 0..5 {
        let fold = crate::data::folds(&all, 5, seed);
        let s = crate::data::split(&all, 0.2, seed).unwrap();
        let valid: HashSet<&str> = s.valid.iter().map(|i| i.file.as_str()).collect();
        for group in &groups {
            let index = |f: &String| all.iter().position(|i| &i.file == f).unwrap();
            let folds: HashSet<usize> = group.iter().map(|f| fold[index(f)]).collect();
            assert_eq!(
                folds.len(),
                1,
                "seed {seed}: group {group:?} in folds {folds:?}"
            );
            let sides: HashSet<bool> = group.iter().map(|f| valid.contains(f.as_str())).collect();
            assert_eq!(sides.len(), 1, "seed {seed}: group {group:?} on both sides");
        }
    }
}
