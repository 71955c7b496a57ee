//! `metrics.jsonl`: one JSON object per log or eval record, appended as the run goes.

use super::TrainError;
use serde_json::{Map, Value};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

/// The metrics file of a run and the records written so far (for plotting).
pub struct MetricsLog {
    path: PathBuf,
    file: File,
    records: Vec<Map<String, Value>>,
}

impl MetricsLog {
    /// Opens `dir/metrics.jsonl`. A fresh run starts it empty; a resumed run keeps the
    /// records up to and including `keep_through` and drops later ones (they belong to
    /// steps that will be recomputed).
    pub fn open(dir: &Path, keep_through: Option<u64>) -> Result<Self, TrainError> {
        let path = dir.join("metrics.jsonl");
        let io = |source| TrainError::Io { path: path.clone(), source };
        let mut records = Vec::new();
        if let Some(last) = keep_through
            && path.exists()
        {
            for line in BufReader::new(File::open(&path).map_err(io)?).lines() {
                let line = line.map_err(io)?;
                if let Ok(Value::Object(r)) = serde_json::from_str::<Value>(&line)
                    && r.get("step").and_then(Value::as_u64).is_some_and(|s| s <= last)
                {
                    records.push(r);
                }
            }
        }
        let mut text = String::new();
        for r in &records {
            text.push_str(&Value::Object(r.clone()).to_string());
            text.push('\n');
        }
        monarch_tensor::write_atomic(&path, text.as_bytes())?;
        let file = OpenOptions::new().append(true).open(&path).map_err(io)?;
        Ok(MetricsLog { path, file, records })
    }

    /// Appends one record (an object with at least `step`).
    pub fn write(&mut self, record: Value) -> Result<(), TrainError> {
        let Value::Object(map) = record else {
            return Err(TrainError::Other("a metrics record must be a JSON object".into()));
        };
        let line = format!("{}\n", Value::Object(map.clone()));
        self.file.write_all(line.as_bytes()).map_err(|source| TrainError::Io { path: self.path.clone(), source })?;
        self.records.push(map);
        Ok(())
    }

    /// `(step, value)` of every record that has `key`.
    pub fn series(&self, key: &str) -> Vec<(u64, f64)> {
        self.records.iter().filter_map(|r| Some((r.get("step")?.as_u64()?, r.get(key)?.as_f64()?))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn resume_keeps_earlier_records_only() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = MetricsLog::open(dir.path(), None).unwrap();
        for s in [10, 20, 30] {
            m.write(json!({"step": s, "loss": s as f64 / 10.0})).unwrap();
        }
        assert!(m.write(json!(3)).is_err());
        let m = MetricsLog::open(dir.path(), Some(20)).unwrap();
        assert_eq!(m.series("loss"), vec![(10, 1.0), (20, 2.0)]);
        let text = std::fs::read_to_string(dir.path().join("metrics.jsonl")).unwrap();
        assert_eq!(text.lines().count(), 2);
    }
}
