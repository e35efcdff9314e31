//! Label-set recognition: class folders, labels CSVs and their errors.

use super::*;

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn labels_of(set: &LabelSet, names: &[String]) -> Vec<(String, u8)> {
    set.items
        .iter()
        .map(|i| (names[i.index].clone(), i.label))
        .collect()
}

#[test]
fn class_folders_as_the_trainer_reads_them() {
    let dropped = names(&[
        "site/effusion/a.png",
        "site/nofinding/b.DCM",
        "site/nofinding/notes.txt",
        "site/effusion/deeper/c.png",
        "site/readme.md",
        "nofinding/d.jpg",
        "effusion.png",
    ]);
    let set = recognise(&dropped, &[]).unwrap().unwrap();
    assert_eq!(set.layout, "class folders");
    assert_eq!(
        labels_of(&set, &dropped),
        [
            ("site/effusion/a.png".to_string(), 1),
            ("site/nofinding/b.DCM".to_string(), 0),
            ("nofinding/d.jpg".to_string(), 0)
        ]
    );
    assert_eq!((set.positives, set.ignored), (1, 4));
    // Folder names are matched exactly, as the trainer does on Linux.
    assert_eq!(
        recognise(&names(&["Effusion/a.png", "x/b.png"]), &[]),
        Ok(None)
    );
}

#[test]
fn an_unlabelled_folder_is_not_a_label_set() {
    let dropped = names(&["scans/a.png", "scans/b.png", "scans/notes.csv"]);
    let csv = (
        "scans/notes.csv".to_string(),
        "date,site\n2024,a\n".to_string(),
    );
    assert_eq!(recognise(&dropped, &[csv]), Ok(None));
    assert_eq!(recognise(&dropped, &[]), Ok(None));
}

#[test]
fn a_labels_csv_matches_files_by_relative_path_or_by_name() {
    let dropped = names(&[
        "site/labels.csv",
        "site/img/a.png",
        "site/img/b.png",
        "site/more/c.dcm",
        "site/d.png",
        "site/unlisted.png",
    ]);
    let text = "\u{feff}Filename,Label\nimg/a.png,1\n\"img/b.png\",no\nc.dcm,Effusion\nd.png,0\n\
                gone.png,1\ne.png,\n";
    let set = recognise(&dropped, &[("site/labels.csv".into(), text.into())])
        .unwrap()
        .unwrap();
    assert_eq!(set.layout, "labels CSV (site/labels.csv)");
    assert_eq!(
        labels_of(&set, &dropped),
        [
            ("site/img/a.png".to_string(), 1),
            ("site/img/b.png".to_string(), 0),
            ("site/more/c.dcm".to_string(), 1),
            ("site/d.png".to_string(), 0)
        ]
    );
    assert_eq!((set.missing, set.excluded, set.ignored), (1, 1, 1));
}

#[test]
fn the_nih_csv_reads_as_the_trainer_reads_it() {
    let dropped = names(&[
        "nih/Data_Entry_2017.csv",
        "nih/images/1.png",
        "nih/images/2.png",
        "nih/images/3.png",
    ]);
    let text = "Image Index,Finding Labels,Follow-up #,Patient ID\n1.png,Effusion|Mass,0,7\n\
                2.png,No Finding,0,8\n3.png,Mass,0,9\n";
    let set = recognise(&dropped, &[("nih/Data_Entry_2017.csv".into(), text.into())])
        .unwrap()
        .unwrap();
    assert_eq!(
        labels_of(&set, &dropped),
        [
            ("nih/images/1.png".to_string(), 1),
            ("nih/images/2.png".to_string(), 0)
        ]
    );
    assert_eq!(set.excluded, 1);
}

#[test]
fn semicolons_and_tabs_are_separators_too() {
    for sep in [";", "\t"] {
        let text = format!("file{sep}effusion\na.png{sep}yes\nb.png{sep}false\n");
        let parsed = parse_labels_csv("l.csv", &text).unwrap().unwrap();
        let got: Vec<(&str, u8)> = parsed
            .rows
            .iter()
            .map(|r| (r.file.as_str(), r.label))
            .collect();
        assert_eq!(got, [("a.png", 1), ("b.png", 0)]);
    }
}

#[test]
fn unusable_csvs_say_what_to_change() {
    let err = parse_labels_csv("l.csv", "file,diagnosis\na.png,1\n").unwrap_err();
    assert!(matches!(err, LabelError::NoLabelColumn { .. }), "{err}");
    assert!(
        err.to_string().contains("label, effusion, Finding Labels"),
        "{err}"
    );
    let err = parse_labels_csv("l.csv", "name,label\na.png,1\n").unwrap_err();
    assert!(err.to_string().contains("Image Index") && err.to_string().contains("name, label"));
    let err = parse_labels_csv("l.csv", "file,label\na.png,1\nb.png,maybe\n").unwrap_err();
    assert_eq!(
        err,
        LabelError::BadLabel {
            file: "l.csv".into(),
            line: 3,
            value: "maybe".into()
        }
    );
    let dropped = names(&["l.csv", "a.png"]);
    let err = recognise(
        &dropped,
        &[("l.csv".into(), "file,label\na.png,1\na.png,0\n".into())],
    );
    assert!(
        matches!(err, Err(LabelError::Conflict { line: 3, .. })),
        "{err:?}"
    );
    // The page's own batch export holds predictions, not labels.
    let export = "file,probability_effusion,label,threshold,not_a_chest_xray,error_code,error\n\
                  a.png,0.9,effusion,0.1,no,,\n";
    assert_eq!(parse_labels_csv("batch.csv", export), Ok(None));
    // An unclosed quote runs to the end of the file (the csv crate is lenient): no labelled row.
    let parsed = parse_labels_csv("l.csv", "file,label\n\"a.png,1\n")
        .unwrap()
        .unwrap();
    assert_eq!((parsed.rows.len(), parsed.excluded), (0, 1));
}

#[test]
fn class_folders_win_over_a_csv() {
    let dropped = names(&["d/effusion/a.png", "d/nofinding/b.png", "d/labels.csv"]);
    let csv = (
        "d/labels.csv".to_string(),
        "file,label\neffusion/a.png,0\n".to_string(),
    );
    let set = recognise(&dropped, &[csv]).unwrap().unwrap();
    assert_eq!(set.layout, "class folders");
    assert_eq!(set.ignored, 1);
}
