//! One test per validation message: each `tests/data/check/NAME.txt` holds the files of a small
//! repository (`//- path` headers) and, after `//- expected`, exactly what `check` must report.
//! Run with `UPDATE_EXPECT=1` to rewrite the expected blocks, then review the diff.

use gatehouse::repo::{Files, compile};

use crate::support::{assert_text, crate_dir};

/// The files and expected output of a fixture.
fn parse(text: &str) -> (Vec<(String, String)>, String, usize) {
    let mut files: Vec<(String, String)> = Vec::new();
    let mut expected = None;
    let mut header_len = 0;
    for (i, line) in text.split_inclusive('\n').enumerate() {
        if let Some(name) = line.strip_prefix("//- ") {
            let name = name.trim().to_string();
            if name == "expected" {
                expected = Some(String::new());
                header_len = text.split_inclusive('\n').take(i + 1).map(str::len).sum();
            } else {
                files.push((name, String::new()));
            }
        } else if let Some(e) = expected.as_mut() {
            e.push_str(line);
        } else if let Some((_, body)) = files.last_mut() {
            body.push_str(line);
        }
    }
    (files, expected.expect("a //- expected section"), header_len)
}

/// What `check` reports for these files: every diagnostic, then ok or the error count.
fn render(files: &[(String, String)]) -> String {
    let files = Files::from_memory(files.iter().map(|(p, t)| (p.as_str(), t.as_str())));
    match compile(&files) {
        Ok(c) => {
            let mut out: String = c.warnings.iter().map(|w| format!("{w}\n")).collect();
            out.push_str("ok\n");
            out
        }
        Err(d) => format!("{d}{}\n", d.summary()),
    }
}

#[test]
fn every_validation_message() {
    let dir = crate_dir().join("tests/data/check");
    let mut names: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    names.sort();
    assert!(names.len() >= 15, "fixtures missing");
    let update = std::env::var_os("UPDATE_EXPECT").is_some();
    for path in names {
        let text = std::fs::read_to_string(&path).unwrap();
        let (files, expected, header_len) = parse(&text);
        let actual = render(&files);
        if update {
            std::fs::write(&path, format!("{}{actual}", &text[..header_len])).unwrap();
        } else {
            assert_text(&path.display().to_string(), &expected, &actual);
        }
    }
}
