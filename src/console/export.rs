//! CSV export of call history: one row per call with the fields of `hotline calls
//! --json`, in the order of [`COLUMNS`]. Text and numbers are written as they are,
//! null as an empty cell, and nested values (answers, recordings, queue, ...) as
//! compact JSON, so a row holds exactly what the JSON does. A cell a spreadsheet
//! would run as a formula (starting with `=`, `+`, `-`, `@`, tab or carriage return)
//! gets a leading apostrophe: caller IDs come from the network. Pure code.

use crate::store::CallRow;
use serde_json::Value;

/// The fields of a call, in `CallRow`'s order.
pub const COLUMNS: [&str; 20] = [
    "id",
    "sip_call_id",
    "direction",
    "from",
    "to",
    "remote_addr",
    "transport",
    "codec",
    "started_at",
    "answered_at",
    "ended_at",
    "end_reason",
    "reference",
    "answers",
    "digits",
    "digit_sources",
    "path",
    "recordings",
    "queue",
    "sealed",
];

fn columns() -> &'static [&'static str] {
    &COLUMNS
}

/// A JSON value as one CSV cell.
pub fn cell(v: &Value) -> String {
    let text = match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        other => other.to_string(),
    };
    if text.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{text}")
    } else {
        text
    }
}

/// The header line.
pub fn header() -> Vec<u8> {
    let mut w = csv::Writer::from_writer(Vec::new());
    let _ = w.write_record(columns());
    w.into_inner().unwrap_or_default()
}

/// Rows for `calls` (no header).
pub fn rows(calls: &[CallRow]) -> Vec<u8> {
    let mut w = csv::WriterBuilder::new()
        .has_headers(false)
        .from_writer(Vec::new());
    for c in calls {
        let v = serde_json::to_value(c).unwrap_or(Value::Null);
        let record: Vec<String> = columns().iter().map(|k| cell(&v[*k])).collect();
        let _ = w.write_record(&record);
    }
    w.into_inner().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call() -> CallRow {
        CallRow {
            id: 7,
            sip_call_id: "abc@x".into(),
            direction: "inbound".into(),
            from: Some("=HYPERLINK(\"http://x\")".into()),
            to: "sip:hotline@127.0.0.1".into(),
            remote_addr: None,
            transport: "UDP".into(),
            codec: Some("PCMU".into()),
            started_at: "2024-05-01T10:00:00Z".into(),
            answered_at: None,
            ended_at: None,
            end_reason: Some("caller-bye".into()),
            reference: Some("4821135".into()),
            answers: [("zone".to_string(), Value::String("2".into()))]
                .into_iter()
                .collect(),
            digits: "2,\"3".into(),
            digit_sources: vec!["rfc4733".into()],
            path: vec!["greeting".into()],
            recordings: vec![],
            queue: None,
            sealed: None,
        }
    }

    #[test]
    fn columns_are_exactly_the_json_fields() {
        let v = serde_json::to_value(call()).unwrap();
        let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(|k| k.as_str()).collect();
        keys.sort();
        let mut cols = columns().to_vec();
        cols.sort();
        assert_eq!(keys, cols);
    }

    #[test]
    fn rows_round_trip_through_a_csv_reader() {
        let mut out = header();
        out.extend(rows(&[call()]));
        let mut r = csv::Reader::from_reader(out.as_slice());
        let head: Vec<String> = r.headers().unwrap().iter().map(String::from).collect();
        assert_eq!(head, columns());
        let rec = r.records().next().unwrap().unwrap();
        assert_eq!(&rec[0], "7");
        assert_eq!(&rec[3], "'=HYPERLINK(\"http://x\")", "formula defused");
        assert_eq!(&rec[5], "", "null");
        assert_eq!(&rec[13], "{\"zone\":\"2\"}");
        assert_eq!(&rec[14], "2,\"3", "quotes and commas survive");
        assert_eq!(&rec[18], "");
        assert_eq!(cell(&Value::from(-1)), "'-1");
    }
}
