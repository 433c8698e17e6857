//! The classifier against payload corpora (`tests/corpus/<group>.txt`: well-known attack strings of
//! each class) and against ordinary feedback (`tests/corpus/clean.txt`), printing each group's
//! precision and recall and the false-positive rate on clean text (`cargo test -p domain --test
//! classification -- --nocapture` shows the table).
//!
//! Recall is the share of a group's payloads flagged with that group. Precision is the share of
//! texts flagged with a group that are that group's payloads or another group's (a probe flagged as
//! a second class is still a probe), against clean text flagged with it.

use domain::feedback::classify::{classify, ProbeGroup};

fn corpus(name: &str) -> Vec<String> {
    let path = format!("{}/tests/corpus/{name}.txt", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {path}: {e}"))
        .lines()
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(unescape)
        .collect()
}

/// `\u{1b}` in a corpus line is that character, so control characters stay readable in the files.
fn unescape(line: &str) -> String {
    let mut out = String::new();
    let mut rest = line;
    while let Some(start) = rest.find("\\u{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 3..];
        let end = after.find('}').expect("a closed \\u{..} escape");
        let code = u32::from_str_radix(&after[..end], 16).expect("a hex escape");
        out.push(char::from_u32(code).expect("a character"));
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    out
}

#[test]
fn every_group_is_caught_in_its_payloads_and_clean_feedback_stays_unflagged() {
    let clean = corpus("clean");
    let payloads: Vec<(ProbeGroup, Vec<String>)> = ProbeGroup::ALL
        .into_iter()
        .map(|group| (group, corpus(group.as_str())))
        .collect();

    let flagged_clean: Vec<(&String, Vec<ProbeGroup>)> = clean
        .iter()
        .map(|text| (text, classify(text)))
        .filter(|(_, groups)| !groups.is_empty())
        .collect();
    let false_positive_rate = flagged_clean.len() as f64 / clean.len() as f64;

    println!("group     payloads  recall  precision");
    let mut failures = Vec::new();
    for (group, texts) in &payloads {
        let missed: Vec<&String> = texts
            .iter()
            .filter(|text| !classify(text).contains(group))
            .collect();
        let caught = texts.len() - missed.len();
        let recall = caught as f64 / texts.len() as f64;
        let probes_flagged = payloads
            .iter()
            .flat_map(|(_, texts)| texts)
            .filter(|text| classify(text).contains(group))
            .count();
        let clean_flagged = flagged_clean
            .iter()
            .filter(|(_, groups)| groups.contains(group))
            .count();
        let precision = probes_flagged as f64 / (probes_flagged + clean_flagged).max(1) as f64;
        println!(
            "{:<9} {:>8}  {recall:>6.2}  {precision:>9.2}",
            group.as_str(),
            texts.len()
        );
        if recall < 0.9 {
            failures.push(format!(
                "{}: recall {recall:.2}, missed {missed:?}",
                group.as_str()
            ));
        }
    }
    println!(
        "clean text: {} of {} flagged ({:.1}%)",
        flagged_clean.len(),
        clean.len(),
        false_positive_rate * 100.0
    );
    for (text, groups) in &flagged_clean {
        println!("  flagged {groups:?}: {text}");
    }
    let all_payloads = payloads.iter().flat_map(|(_, texts)| texts).count();
    let unflagged_payloads: Vec<&String> = payloads
        .iter()
        .flat_map(|(_, texts)| texts)
        .filter(|text| classify(text).is_empty())
        .collect();
    println!(
        "payloads flagged as nothing: {} of {all_payloads}",
        unflagged_payloads.len()
    );
    for text in &unflagged_payloads {
        println!("  missed: {text}");
    }
    assert!(
        unflagged_payloads.len() * 20 <= all_payloads,
        "more than 5% of the payloads flagged as nothing: {unflagged_payloads:?}"
    );
    assert!(failures.is_empty(), "{failures:#?}");
    assert!(
        false_positive_rate <= 0.02,
        "{} of {} clean texts flagged: {flagged_clean:?}",
        flagged_clean.len(),
        clean.len()
    );
}
