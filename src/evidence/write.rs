//! The file formats: CSV (RFC 4180: CRLF, every cell quoted, a leading `= + - @` (or tab, CR)
//! neutralised with `'` so that a spreadsheet never evaluates it; lists joined with `; `) and
//! JSON (`{"control", "table", "iso", "period", "population", "source", "columns", "rows"}`,
//! one row object per line, keys in column order). Files are hashed while they are written.

use std::borrow::Cow;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::Value;

use super::{Control, Format, PREVIEW_ROWS, Period, Table, Written};
use crate::record::audit::verify::Hashing;

/// The `--out` that means standard output.
pub(crate) const STDOUT: &str = "-";

/// Where rows go: a file being written, or a table in memory.
pub(crate) trait Sink {
    fn row(&mut self, cells: Vec<Value>) -> Result<()>;

    /// A row of borrowed cells (the call log's hot path: nothing allocated to write it).
    fn row_ref(&mut self, cells: &[CellRef]) -> Result<()> {
        self.row(cells.iter().map(|c| c.to_value()).collect())
    }

    /// The encoding of the row just written, when this sink encodes rows.
    fn last_row(&self) -> Option<&[u8]> {
        None
    }

    /// A row already encoded by a sink of the same format and columns (`bytes`), with its cells.
    fn row_bytes(&mut self, _bytes: &[u8], cells: &[CellRef]) -> Result<()> {
        self.row_ref(cells)
    }
}

/// A string read in place when it has no escapes.
#[derive(Debug, serde::Deserialize)]
pub(crate) struct Text<'a>(#[serde(borrow)] pub Cow<'a, str>);

/// A cell borrowed from a record being read.
#[derive(Debug, Clone, Copy)]
pub(crate) enum CellRef<'a> {
    Null,
    Str(&'a str),
    Num(u64),
    List(&'a [Text<'a>]),
}

impl CellRef<'_> {
    pub fn to_value(self) -> Value {
        match self {
            CellRef::Null => Value::Null,
            CellRef::Str(s) => Value::String(s.to_string()),
            CellRef::Num(n) => Value::from(n),
            CellRef::List(items) => Value::Array(items.iter().map(|i| Value::String(i.0.to_string())).collect()),
        }
    }
}

impl Sink for Vec<Vec<Value>> {
    fn row(&mut self, cells: Vec<Value>) -> Result<()> {
        self.push(cells);
        Ok(())
    }
}

/// What a file states before its rows.
pub(crate) struct Header<'a> {
    pub table: &'static str,
    pub control: Control,
    pub period: &'a Period,
    pub population: u64,
    pub source: &'a Value,
    pub columns: &'a [&'static str],
}

/// Writes `table` as CSV: a header line, then one line per row.
pub fn write_csv(table: &Table, w: &mut dyn Write) -> Result<()> {
    let mut buf = Vec::new();
    csv_line(table.columns.iter().map(|c| Value::String(c.to_string())).collect::<Vec<_>>().as_slice(), &mut buf);
    for row in &table.rows {
        csv_line(row, &mut buf);
        if buf.len() > 1 << 16 {
            w.write_all(&buf)?;
            buf.clear();
        }
    }
    w.write_all(&buf)?;
    Ok(())
}

/// Writes `table` as one JSON document: control, period, population, columns and rows.
pub fn write_json(table: &Table, period: &Period, w: &mut dyn Write) -> Result<()> {
    let header = Header {
        table: table.name,
        control: table.control,
        period,
        population: table.population,
        source: &table.source,
        columns: &table.columns,
    };
    let mut buf = Vec::new();
    json_header(&header, &mut buf);
    for (i, row) in table.rows.iter().enumerate() {
        buf.extend_from_slice(if i == 0 { b"\n" } else { b",\n" });
        json_row(&table.columns, row, &mut buf);
        if buf.len() > 1 << 16 {
            w.write_all(&buf)?;
            buf.clear();
        }
    }
    buf.extend_from_slice(b"\n]}\n");
    w.write_all(&buf)?;
    Ok(())
}

/// A file being written row by row, hashed on the way, keeping the first rows as a preview.
pub(crate) struct FileOut {
    path: PathBuf,
    format: Format,
    columns: Vec<&'static str>,
    w: BufWriter<Hashing<Box<dyn Write>>>,
    rows: u64,
    preview: Vec<Vec<Value>>,
    /// The last row's encoding (without the separator before it).
    buf: Vec<u8>,
    scratch: String,
}

impl FileOut {
    /// Creates `path`; `-` is standard output.
    pub fn create(path: &Path, format: Format, header: &Header) -> Result<FileOut> {
        let inner: Box<dyn Write> = if path == Path::new(STDOUT) {
            Box::new(std::io::stdout())
        } else {
            Box::new(File::create(path).with_context(|| format!("creating {}", path.display()))?)
        };
        let mut out = FileOut {
            path: path.to_path_buf(),
            format,
            columns: header.columns.to_vec(),
            w: BufWriter::with_capacity(1 << 20, Hashing::new(inner)),
            rows: 0,
            preview: Vec::new(),
            buf: Vec::with_capacity(4096),
            scratch: String::new(),
        };
        match format {
            Format::Csv => {
                let names: Vec<Value> = header.columns.iter().map(|c| Value::String(c.to_string())).collect();
                csv_line(&names, &mut out.buf);
            }
            Format::Json => json_header(header, &mut out.buf),
        }
        out.w.write_all(&out.buf)?;
        out.buf.clear();
        Ok(out)
    }

    /// Writes the row encoded in `buf`, after the separator the format needs.
    fn put(&mut self, bytes: Option<&[u8]>) -> Result<()> {
        if self.format == Format::Json {
            self.w.write_all(if self.rows == 0 { b"\n" } else { b",\n" })?;
        }
        self.w.write_all(bytes.unwrap_or(&self.buf)).with_context(|| format!("writing {}", self.path.display()))?;
        self.rows += 1;
        Ok(())
    }

    /// Closes the file; `meta` gives the table's name, control, population and source.
    pub fn finish(mut self, meta: &Table) -> Result<Written> {
        if self.format == Format::Json {
            self.w.write_all(b"\n]}\n")?;
        }
        // Flushed, not fsynced: an export is re-creatable, and MANIFEST.json tells a torn one.
        let hashing = self
            .w
            .into_inner()
            .map_err(|e| e.into_error())
            .with_context(|| format!("writing {}", self.path.display()))?;
        debug_assert_eq!(self.rows, meta.population);
        Ok(Written {
            path: self.path,
            table: meta.name,
            control: meta.control,
            population: self.rows,
            bytes: hashing.bytes(),
            sha256: hashing.sha256_hex(),
            columns: meta.columns.clone(),
            preview: self.preview,
            source: meta.source.clone(),
        })
    }
}

impl Sink for FileOut {
    fn row(&mut self, cells: Vec<Value>) -> Result<()> {
        self.buf.clear();
        match self.format {
            Format::Csv => csv_line(&cells, &mut self.buf),
            Format::Json => json_row(&self.columns, &cells, &mut self.buf),
        }
        self.put(None)?;
        if self.preview.len() < PREVIEW_ROWS {
            self.preview.push(cells);
        }
        Ok(())
    }

    fn row_ref(&mut self, cells: &[CellRef]) -> Result<()> {
        if self.preview.len() < PREVIEW_ROWS {
            return Sink::row(self, cells.iter().map(|c| c.to_value()).collect());
        }
        self.buf.clear();
        match self.format {
            Format::Csv => csv_line_ref(cells, &mut self.buf, &mut self.scratch),
            Format::Json => json_row_ref(&self.columns, cells, &mut self.buf),
        }
        self.put(None)
    }

    fn last_row(&self) -> Option<&[u8]> {
        Some(&self.buf)
    }

    fn row_bytes(&mut self, bytes: &[u8], cells: &[CellRef]) -> Result<()> {
        if self.preview.len() < PREVIEW_ROWS {
            return self.row_ref(cells);
        }
        self.put(Some(bytes))
    }
}

impl FileOut {
    /// Writes a row given by reference (for in-memory tables).
    pub fn row_values(&mut self, cells: &[Value]) -> Result<()> {
        Sink::row(self, cells.to_vec())
    }
}

// === Encoding ===

/// The text of a cell: null → empty, lists joined with `; `, objects as JSON.
pub(crate) fn cell_text(v: &Value, out: &mut String) {
    match v {
        Value::Null => {}
        Value::String(s) => out.push_str(s),
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str("; ");
                }
                match item {
                    Value::String(s) => out.push_str(s),
                    other => out.push_str(&other.to_string()),
                }
            }
        }
        other => out.push_str(&other.to_string()),
    }
}

/// One quoted CSV cell: a leading `= + - @` (tab, CR) neutralised with `'`, quotes doubled.
fn csv_quote(text: &str, buf: &mut Vec<u8>) {
    buf.push(b'"');
    if text.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        buf.push(b'\'');
    }
    if text.contains('"') {
        for (i, part) in text.split('"').enumerate() {
            if i > 0 {
                buf.extend_from_slice(b"\"\"");
            }
            buf.extend_from_slice(part.as_bytes());
        }
    } else {
        buf.extend_from_slice(text.as_bytes());
    }
    buf.push(b'"');
}

fn csv_line(cells: &[Value], buf: &mut Vec<u8>) {
    let mut text = String::new();
    for (i, v) in cells.iter().enumerate() {
        if i > 0 {
            buf.push(b',');
        }
        match v {
            Value::String(s) => csv_quote(s, buf),
            other => {
                text.clear();
                cell_text(other, &mut text);
                csv_quote(&text, buf);
            }
        }
    }
    buf.extend_from_slice(b"\r\n");
}

fn csv_line_ref(cells: &[CellRef], buf: &mut Vec<u8>, scratch: &mut String) {
    for (i, c) in cells.iter().enumerate() {
        if i > 0 {
            buf.push(b',');
        }
        match c {
            CellRef::Null => buf.extend_from_slice(b"\"\""),
            CellRef::Str(s) => csv_quote(s, buf),
            CellRef::Num(n) => {
                let _ = write!(buf, "\"{n}\"");
            }
            CellRef::List(items) => {
                scratch.clear();
                for (i, t) in items.iter().enumerate() {
                    if i > 0 {
                        scratch.push_str("; ");
                    }
                    scratch.push_str(&t.0);
                }
                csv_quote(scratch, buf);
            }
        }
    }
    buf.extend_from_slice(b"\r\n");
}

fn json_header(h: &Header, buf: &mut Vec<u8>) {
    let s = |v: &str| serde_json::to_string(v).expect("a string serializes");
    buf.extend_from_slice(
        format!(
            "{{\"control\":{},\"table\":{},\"iso\":{},\"period\":{},\"population\":{},\"source\":{},\"columns\":{},\"rows\":[",
            s(h.control.name()),
            s(h.table),
            s(h.control.iso()),
            h.period.to_json(),
            h.population,
            h.source,
            serde_json::to_string(h.columns).expect("strings serialize"),
        )
        .as_bytes(),
    );
}

/// One row object (without the separator before it).
fn json_row(columns: &[&str], cells: &[Value], buf: &mut Vec<u8>) {
    buf.push(b'{');
    for (i, (k, v)) in columns.iter().zip(cells).enumerate() {
        if i > 0 {
            buf.push(b',');
        }
        serde_json::to_writer(&mut *buf, k).expect("writing to a Vec");
        buf.push(b':');
        serde_json::to_writer(&mut *buf, v).expect("writing to a Vec");
    }
    buf.push(b'}');
}

fn json_row_ref(columns: &[&str], cells: &[CellRef], buf: &mut Vec<u8>) {
    buf.push(b'{');
    for (i, (k, c)) in columns.iter().zip(cells).enumerate() {
        if i > 0 {
            buf.push(b',');
        }
        serde_json::to_writer(&mut *buf, k).expect("writing to a Vec");
        buf.push(b':');
        match c {
            CellRef::Null => buf.extend_from_slice(b"null"),
            CellRef::Str(s) => serde_json::to_writer(&mut *buf, s).expect("writing to a Vec"),
            CellRef::Num(n) => {
                let _ = write!(buf, "{n}");
            }
            CellRef::List(items) => {
                buf.push(b'[');
                for (i, t) in items.iter().enumerate() {
                    if i > 0 {
                        buf.push(b',');
                    }
                    serde_json::to_writer(&mut *buf, &*t.0).expect("writing to a Vec");
                }
                buf.push(b']');
            }
        }
    }
    buf.push(b'}');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn csv_cells_are_quoted_and_neutralised() {
        let mut buf = Vec::new();
        csv_line(
            &[json!("=SUM(A1)"), json!("a \"b\""), Value::Null, json!(["x", "y"]), json!(12), json!("-1"), json!("@x")],
            &mut buf,
        );
        assert_eq!(
            String::from_utf8(buf).unwrap(),
            "\"'=SUM(A1)\",\"a \"\"b\"\"\",\"\",\"x; y\",\"12\",\"'-1\",\"'@x\"\r\n"
        );
    }

    #[test]
    fn borrowed_cells_encode_like_values() {
        let list = [Text(Cow::Borrowed("x")), Text(Cow::Borrowed("y"))];
        let refs = [CellRef::Str("=1"), CellRef::Null, CellRef::Num(7), CellRef::List(&list), CellRef::Str("a\"b")];
        let values: Vec<Value> = refs.iter().map(|c| c.to_value()).collect();
        let (mut a, mut b) = (Vec::new(), Vec::new());
        csv_line_ref(&refs, &mut a, &mut String::new());
        csv_line(&values, &mut b);
        assert_eq!(a, b);
        let cols = ["a", "b", "c", "d", "e"];
        let (mut a, mut b) = (Vec::new(), Vec::new());
        json_row_ref(&cols, &refs, &mut a);
        json_row(&cols, &values, &mut b);
        assert_eq!(a, b);
    }

    #[test]
    fn tables_write_as_csv_and_json() {
        let t = Table {
            name: "events",
            control: Control::Calls,
            columns: vec!["id", "kind"],
            rows: vec![vec![json!(1), json!("a")], vec![json!(2), json!("+b")]],
            population: 2,
            source: json!({}),
        };
        let mut csv = Vec::new();
        write_csv(&t, &mut csv).unwrap();
        assert_eq!(String::from_utf8(csv).unwrap(), "\"id\",\"kind\"\r\n\"1\",\"a\"\r\n\"2\",\"'+b\"\r\n");
        let period = Period::parse("2026-11-01", "2026-12-01").unwrap();
        let mut out = Vec::new();
        write_json(&t, &period, &mut out).unwrap();
        let doc: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(doc["control"], "calls");
        assert_eq!(doc["table"], "events");
        assert_eq!(doc["population"], 2);
        assert_eq!(doc["period"]["until"], "2026-12-01T00:00:00.000Z");
        assert_eq!(doc["columns"], json!(["id", "kind"]));
        assert_eq!(doc["rows"], json!([{ "id": 1, "kind": "a" }, { "id": 2, "kind": "+b" }]));
    }

    #[test]
    fn json_rows_follow_the_columns() {
        let mut buf = Vec::new();
        json_row(&["b", "a"], &[json!(1), json!(["x"])], &mut buf);
        assert_eq!(String::from_utf8(buf).unwrap(), "{\"b\":1,\"a\":[\"x\"]}");
    }
}
