//! Reading one node of the layout JSON: every field taken by name, every field the reader did not
//! take reported as unknown, and every error naming the node by its path in the layout
//! (`disk.main.content.partitions.root.size`), so a typo is found before anything is touched.

use serde_json::{Map, Value};

/// What is wrong with a layout, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    #[error("the layout is not valid JSON: {0}")]
    Json(String),
    #[error(
        "{}: unknown field `{field}` (a typo, or an option this tool does not know)",
        join(path, field)
    )]
    UnknownField { path: String, field: String },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

impl LayoutError {
    pub fn invalid(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid {
            path: path.into(),
            message: message.into(),
        }
    }

    /// The node the error is about (empty for a JSON syntax error).
    pub fn path(&self) -> String {
        match self {
            Self::Json(_) => String::new(),
            Self::UnknownField { path, field } => join(path, field),
            Self::Invalid { path, .. } => path.clone(),
        }
    }
}

fn join(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_owned()
    } else {
        format!("{path}.{field}")
    }
}

pub type Result<T> = std::result::Result<T, LayoutError>;

/// One JSON object of the layout, consumed field by field.
pub struct Node {
    pub path: String,
    map: Map<String, Value>,
}

impl Node {
    pub fn new(path: impl Into<String>, value: Value) -> Result<Self> {
        let path = path.into();
        match value {
            Value::Object(map) => Ok(Self { path, map }),
            other => Err(LayoutError::invalid(
                path,
                format!("expected an attribute set, found {}", kind(&other)),
            )),
        }
    }

    /// The path of a field of this node.
    pub fn at(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    pub fn has(&self, key: &str) -> bool {
        self.map.get(key).is_some_and(|v| !v.is_null())
    }

    /// Takes a field; `null` counts as absent, as the Nix `null` default.
    pub fn take(&mut self, key: &str) -> Option<Value> {
        self.map.remove(key).filter(|v| !v.is_null())
    }

    pub fn peek(&self, key: &str) -> Option<&Value> {
        self.map.get(key)
    }

    pub fn opt_str(&mut self, key: &str) -> Result<Option<String>> {
        match self.take(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(self.wrong(key, "a string", &other)),
        }
    }

    pub fn str_or(&mut self, key: &str, default: &str) -> Result<String> {
        Ok(self.opt_str(key)?.unwrap_or_else(|| default.to_owned()))
    }

    pub fn req_str(&mut self, key: &str) -> Result<String> {
        self.opt_str(key)?
            .ok_or_else(|| LayoutError::invalid(self.at(key), "is required"))
    }

    pub fn bool_or(&mut self, key: &str, default: bool) -> Result<bool> {
        match self.take(key) {
            None => Ok(default),
            Some(Value::Bool(b)) => Ok(b),
            Some(other) => Err(self.wrong(key, "true or false", &other)),
        }
    }

    pub fn opt_int(&mut self, key: &str) -> Result<Option<i64>> {
        match self.take(key) {
            None => Ok(None),
            Some(Value::Number(n)) if n.is_i64() => Ok(n.as_i64()),
            Some(other) => Err(self.wrong(key, "an integer", &other)),
        }
    }

    /// A list of strings (`extraArgs`, `mountOptions`); absent gives `default`.
    pub fn strings_or(&mut self, key: &str, default: &[&str]) -> Result<Vec<String>> {
        match self.take(key) {
            None => Ok(default.iter().map(|s| (*s).to_owned()).collect()),
            Some(Value::Array(items)) => items
                .into_iter()
                .enumerate()
                .map(|(i, v)| match v {
                    Value::String(s) => Ok(s),
                    other => Err(LayoutError::invalid(
                        format!("{}[{i}]", self.at(key)),
                        format!("expected a string, found {}", kind(&other)),
                    )),
                })
                .collect(),
            Some(other) => Err(self.wrong(key, "a list of strings", &other)),
        }
    }

    /// An attribute set of scalar options (`zpool.options`, zfs `options`), values as the
    /// command line gets them, in attribute-name order.
    pub fn options(&mut self, key: &str) -> Result<Vec<(String, String)>> {
        let Some(value) = self.take(key) else {
            return Ok(Vec::new());
        };
        let path = self.at(key);
        let Value::Object(map) = value else {
            return Err(LayoutError::invalid(
                path,
                format!("expected an attribute set, found {}", kind(&value)),
            ));
        };
        let mut out = Vec::with_capacity(map.len());
        for (k, v) in map {
            let text = match v {
                Value::String(s) => s,
                Value::Bool(b) => b.to_string(),
                Value::Number(n) => n.to_string(),
                other => {
                    return Err(LayoutError::invalid(
                        format!("{path}.{k}"),
                        format!(
                            "expected a string, number or boolean, found {}",
                            kind(&other)
                        ),
                    ));
                }
            };
            out.push((k, text));
        }
        out.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        Ok(out)
    }

    /// A child node, when present.
    pub fn child(&mut self, key: &str) -> Result<Option<Node>> {
        let path = self.at(key);
        self.take(key).map(|v| Node::new(path, v)).transpose()
    }

    /// The members of an attribute set of nodes (`partitions`, `lvs`, `subvolumes`), in Nix
    /// attribute-name order (byte order).
    pub fn attrs(&mut self, key: &str) -> Result<Vec<(String, Node)>> {
        let path = self.at(key);
        match self.take(key) {
            None => Ok(Vec::new()),
            Some(Value::Object(map)) => attrs_of(&path, map),
            Some(other) => Err(LayoutError::invalid(
                path,
                format!("expected an attribute set, found {}", kind(&other)),
            )),
        }
    }

    /// Fields disko computes itself (`device`, `_index`, `_name`): accepted, since evaluated
    /// layouts carry them, and recomputed from the layout, so a `--disk` override reaches them.
    pub fn drop_derived(&mut self, keys: &[&str]) {
        for key in keys {
            self.map.remove(*key);
        }
    }

    /// Ends reading: a field nobody took is an error.
    pub fn finish(self) -> Result<()> {
        match self.map.into_iter().next() {
            None => Ok(()),
            Some((field, _)) => Err(LayoutError::UnknownField {
                path: self.path,
                field,
            }),
        }
    }

    fn wrong(&self, key: &str, expected: &str, found: &Value) -> LayoutError {
        LayoutError::invalid(
            self.at(key),
            format!("expected {expected}, found {}", kind(found)),
        )
    }
}

pub fn attrs_of(path: &str, map: Map<String, Value>) -> Result<Vec<(String, Node)>> {
    let mut out = Vec::with_capacity(map.len());
    for (name, v) in map {
        let node = Node::new(format!("{path}.{name}"), v)?;
        out.push((name, node));
    }
    out.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    Ok(out)
}

pub fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an attribute set",
    }
}
