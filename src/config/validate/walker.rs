//! Typed getters over a connector document, whichever format it came in.
//!
//! A document is either toml's span-carrying tree (`DeValue`, positions are byte offsets into
//! the text, reported as line:column) or a `serde_json::Value` (positions are RFC 6901 JSON
//! pointers built while descending). [`Node`], [`Table`] and [`Array`] hide the difference, and
//! the [`Walker`] reads them with typed getters that record a [`Diagnostic`] and return `None`
//! (or the default) on a wrong type, so every rule in the per-kind files is written once.
//!
//! Type names in messages are TOML's (`a table`, `an integer`, …) for both formats, so the same
//! broken connector gets the same message whichever way it was written; a JSON object reads as
//! "a table", a JSON `null` as "null".

use serde_json::Value as Json;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

use crate::config::Location;
use crate::model::{ConnectorKind, Diagnostic, Severity};

/// Where a value sits in its document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Pos {
    /// Byte offset into TOML text; reported as 1-based line and character column.
    Offset(usize),
    /// RFC 6901 JSON pointer from the document root (`""` is the whole document).
    Pointer(String),
}

/// Appends one reference token to a JSON pointer, escaping `~` and `/` (RFC 6901 §3).
fn pointer_child(base: &str, token: &str) -> String {
    let mut out = String::with_capacity(base.len() + token.len() + 1);
    out.push_str(base);
    out.push('/');
    for c in token.chars() {
        match c {
            '~' => out.push_str("~0"),
            '/' => out.push_str("~1"),
            c => out.push(c),
        }
    }
    out
}

/// The base pointer of a JSON position (empty for a TOML one, which never reaches here).
fn pointer_of(pos: &Pos) -> &str {
    match pos {
        Pos::Pointer(p) => p,
        Pos::Offset(_) => "",
    }
}

#[derive(Clone, Copy)]
enum Raw<'t, 'i> {
    Toml(&'t DeValue<'i>),
    Json(&'t Json),
}

/// One value of the document and where it is.
#[derive(Clone)]
pub(super) struct Node<'t, 'i> {
    raw: Raw<'t, 'i>,
    pub(super) pos: Pos,
}

impl<'t, 'i> Node<'t, 'i> {
    pub(super) fn toml(v: &'t Spanned<DeValue<'i>>) -> Node<'t, 'i> {
        Node {
            raw: Raw::Toml(v.get_ref()),
            pos: Pos::Offset(v.span().start),
        }
    }

    pub(super) fn json(v: &'t Json, pointer: String) -> Node<'t, 'i> {
        Node {
            raw: Raw::Json(v),
            pos: Pos::Pointer(pointer),
        }
    }

    /// The value's type for "expected X, found Y" messages.
    pub(super) fn type_name(&self) -> &'static str {
        match self.raw {
            Raw::Toml(v) => match v {
                DeValue::String(_) => "a string",
                DeValue::Integer(_) => "an integer",
                DeValue::Float(_) => "a float",
                DeValue::Boolean(_) => "a boolean",
                DeValue::Datetime(_) => "a datetime",
                DeValue::Array(_) => "an array",
                DeValue::Table(_) => "a table",
            },
            Raw::Json(v) => match v {
                Json::String(_) => "a string",
                Json::Number(n) if n.is_f64() => "a float",
                Json::Number(_) => "an integer",
                Json::Bool(_) => "a boolean",
                Json::Array(_) => "an array",
                Json::Object(_) => "a table",
                Json::Null => "null",
            },
        }
    }

    pub(super) fn as_str(&self) -> Option<&'t str> {
        match self.raw {
            Raw::Toml(DeValue::String(s)) => Some(s),
            Raw::Json(Json::String(s)) => Some(s),
            _ => None,
        }
    }

    pub(super) fn as_bool(&self) -> Option<bool> {
        match self.raw {
            Raw::Toml(DeValue::Boolean(b)) | Raw::Json(Json::Bool(b)) => Some(*b),
            _ => None,
        }
    }

    /// An integer that fits `i64` (a TOML literal in any radix, a JSON number without fraction).
    pub(super) fn as_int(&self) -> Option<i64> {
        match self.raw {
            Raw::Toml(DeValue::Integer(i)) => i64::from_str_radix(i.as_str(), i.radix()).ok(),
            Raw::Json(Json::Number(n)) => n.as_i64(),
            _ => None,
        }
    }

    /// This value as a table whose keys are reported as `prefix` + key.
    pub(super) fn as_table(&self, prefix: String) -> Option<Table<'t, 'i>> {
        let map = match self.raw {
            Raw::Toml(DeValue::Table(t)) => Map::Toml(t),
            Raw::Json(Json::Object(m)) => Map::Json(m),
            _ => return None,
        };
        Some(Table {
            map,
            pos: self.pos.clone(),
            prefix,
        })
    }

    pub(super) fn as_array(&self) -> Option<Array<'t, 'i>> {
        let items = match self.raw {
            Raw::Toml(DeValue::Array(a)) => Items::Toml(a),
            Raw::Json(Json::Array(a)) => Items::Json(a),
            _ => return None,
        };
        Some(Array {
            items,
            pos: self.pos.clone(),
        })
    }

    /// The value as JSON (TOML datetimes become strings, unrepresentable numbers `null`).
    pub(super) fn to_json(&self) -> Json {
        match self.raw {
            Raw::Toml(v) => toml_to_json(v),
            Raw::Json(v) => v.clone(),
        }
    }
}

fn toml_to_json(v: &DeValue<'_>) -> Json {
    match v {
        DeValue::String(s) => Json::String(s.to_string()),
        DeValue::Integer(i) => {
            i64::from_str_radix(i.as_str(), i.radix()).map_or(Json::Null, Json::from)
        }
        DeValue::Float(f) => f
            .as_str()
            .replace('_', "")
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map_or(Json::Null, Json::Number),
        DeValue::Boolean(b) => Json::Bool(*b),
        DeValue::Datetime(d) => Json::String(d.to_string()),
        DeValue::Array(a) => Json::Array(a.iter().map(|x| toml_to_json(x.get_ref())).collect()),
        DeValue::Table(t) => Json::Object(
            t.iter()
                .map(|(k, x)| (k.get_ref().to_string(), toml_to_json(x.get_ref())))
                .collect(),
        ),
    }
}

#[derive(Clone, Copy)]
enum Map<'t, 'i> {
    Toml(&'t DeTable<'i>),
    Json(&'t serde_json::Map<String, Json>),
}

/// One table being read (a connector, or a table inside one).
pub(super) struct Table<'t, 'i> {
    map: Map<'t, 'i>,
    /// Where the table starts (TOML: its header or `{`; JSON: its pointer).
    pub(super) pos: Pos,
    /// Dotted prefix of keys in this table (`session_policy.`), empty at connector level.
    prefix: String,
}

impl<'t, 'i> Table<'t, 'i> {
    /// The document root of a TOML file.
    pub(super) fn toml_root(table: &'t DeTable<'i>) -> Table<'t, 'i> {
        Table {
            map: Map::Toml(table),
            pos: Pos::Offset(0),
            prefix: String::new(),
        }
    }

    pub(super) fn get(&self, key: &str) -> Option<Node<'t, 'i>> {
        match self.map {
            Map::Toml(t) => t.get(key).map(Node::toml),
            Map::Json(m) => m
                .get(key)
                .map(|v| Node::json(v, pointer_child(pointer_of(&self.pos), key))),
        }
    }

    /// Whether `key` is present (whatever its value), without building a position.
    pub(super) fn has(&self, key: &str) -> bool {
        match self.map {
            Map::Toml(t) => t.contains_key(key),
            Map::Json(m) => m.contains_key(key),
        }
    }

    /// The keys in the order the document's map iterates them.
    pub(super) fn keys(&self) -> Vec<&'t str> {
        match self.map {
            Map::Toml(t) => t.iter().map(|(k, _)| k.get_ref().as_ref()).collect(),
            Map::Json(m) => m.keys().map(String::as_str).collect(),
        }
    }

    /// Where `key` itself is written (TOML: the key, not its value; JSON: the member's pointer).
    pub(super) fn key_pos(&self, key: &str) -> Pos {
        match self.map {
            Map::Toml(t) => t
                .get_key_value(key)
                .map_or(self.pos.clone(), |(k, _)| Pos::Offset(k.span().start)),
            Map::Json(_) => Pos::Pointer(pointer_child(pointer_of(&self.pos), key)),
        }
    }

    /// The dotted field name of `key` in diagnostics.
    pub(super) fn path(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }
}

#[derive(Clone, Copy)]
enum Items<'t, 'i> {
    Toml(&'t [Spanned<DeValue<'i>>]),
    Json(&'t [Json]),
}

/// One array being read.
pub(super) struct Array<'t, 'i> {
    items: Items<'t, 'i>,
    pos: Pos,
}

impl<'t, 'i> Array<'t, 'i> {
    pub(super) fn len(&self) -> usize {
        match self.items {
            Items::Toml(a) => a.len(),
            Items::Json(a) => a.len(),
        }
    }

    pub(super) fn get(&self, i: usize) -> Option<Node<'t, 'i>> {
        match self.items {
            Items::Toml(a) => a.get(i).map(Node::toml),
            Items::Json(a) => a
                .get(i)
                .map(|v| Node::json(v, pointer_child(pointer_of(&self.pos), &i.to_string()))),
        }
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = Node<'t, 'i>> + '_ {
        (0..self.len()).filter_map(|i| self.get(i))
    }
}

/// Byte offset → 1-based line and character column.
pub(super) struct LineIndex<'a> {
    text: &'a str,
    starts: Vec<usize>,
}

impl<'a> LineIndex<'a> {
    pub(super) fn new(text: &'a str) -> LineIndex<'a> {
        let mut starts = vec![0];
        starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        LineIndex { text, starts }
    }

    pub(super) fn locate(&self, offset: usize) -> Location {
        let offset = offset.min(self.text.len());
        let line_idx = self.starts.partition_point(|&s| s <= offset) - 1;
        let start = self.starts[line_idx];
        let column = self
            .text
            .get(start..offset)
            .map_or(offset - start, |s| s.chars().count())
            + 1;
        Location {
            line: line_idx as u32 + 1,
            column: column as u32,
            pointer: None,
        }
    }
}

/// Which connector (and which nested table) a diagnostic is about.
#[derive(Debug, Clone)]
pub(super) struct Subject {
    pub(super) kind: Option<ConnectorKind>,
    pub(super) connector: Option<String>,
    pub(super) field: Option<String>,
}

impl Subject {
    pub(super) fn file() -> Subject {
        Subject {
            kind: None,
            connector: None,
            field: None,
        }
    }

    /// A top-level key of the document.
    pub(super) fn top_level(key: &str) -> Subject {
        Subject {
            field: Some(key.to_string()),
            ..Subject::file()
        }
    }
}

/// The connector being read: its kind, its label for diagnostics (the name once known, else
/// `#N`), and where its table starts.
#[derive(Clone)]
pub(super) struct Ctx {
    pub(super) kind: ConnectorKind,
    pub(super) label: String,
    pub(super) start: Pos,
}

impl Ctx {
    fn subject(&self, field: &str) -> Subject {
        Subject {
            kind: Some(self.kind),
            connector: Some(self.label.clone()),
            field: (!field.is_empty()).then(|| field.to_string()),
        }
    }
}

/// The key closest to `unknown` among `known`, when one is close enough to be a likely typo.
pub(super) fn suggest<'k>(unknown: &str, known: &[&'k str]) -> Option<&'k str> {
    known
        .iter()
        .map(|k| (strsim::jaro_winkler(unknown, k), *k))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, k)| k)
}

/// Reads one document and collects its diagnostics.
pub(super) struct Walker<'a> {
    file: &'a str,
    /// Present for TOML text; JSON positions are pointers and need no index.
    lines: Option<LineIndex<'a>>,
    pub(super) diags: Vec<Diagnostic>,
}

impl<'a> Walker<'a> {
    pub(super) fn new(file: &'a str, lines: Option<LineIndex<'a>>) -> Walker<'a> {
        Walker {
            file,
            lines,
            diags: Vec::new(),
        }
    }

    pub(super) fn location(&self, pos: &Pos) -> Location {
        match pos {
            Pos::Offset(offset) => self
                .lines
                .as_ref()
                .map_or_else(Location::default, |l| l.locate(*offset)),
            Pos::Pointer(p) => Location {
                line: 0,
                column: 0,
                pointer: Some(p.clone()),
            },
        }
    }

    /// "on line 7" (TOML) or "at /http_connectors/0/name" (JSON), for "first used …" messages.
    pub(super) fn describe(&self, pos: &Pos) -> String {
        match pos {
            Pos::Offset(_) => format!("on line {}", self.location(pos).line),
            Pos::Pointer(p) => format!("at {p}"),
        }
    }

    pub(super) fn push(
        &mut self,
        severity: Severity,
        pos: &Pos,
        subject: Subject,
        message: String,
        help: Option<String>,
    ) {
        let loc = self.location(pos);
        self.diags.push(Diagnostic {
            severity,
            file: self.file.to_string(),
            line: loc.line,
            column: loc.column,
            pointer: loc.pointer,
            connector_kind: subject.kind,
            connector: subject.connector,
            field: subject.field,
            message,
            help,
        });
    }

    pub(super) fn err(&mut self, ctx: &Ctx, pos: &Pos, field: &str, message: impl Into<String>) {
        self.push(
            Severity::Error,
            pos,
            ctx.subject(field),
            message.into(),
            None,
        );
    }

    pub(super) fn err_help(
        &mut self,
        ctx: &Ctx,
        pos: &Pos,
        field: &str,
        message: impl Into<String>,
        help: impl Into<String>,
    ) {
        self.push(
            Severity::Error,
            pos,
            ctx.subject(field),
            message.into(),
            Some(help.into()),
        );
    }

    pub(super) fn warn(
        &mut self,
        ctx: &Ctx,
        pos: &Pos,
        field: &str,
        message: String,
        help: String,
    ) {
        self.push(
            Severity::Warning,
            pos,
            ctx.subject(field),
            message,
            Some(help),
        );
    }

    // ---- typed getters: each reports a type error and returns None on a wrong type ----

    pub(super) fn wrong_type(
        &mut self,
        ctx: &Ctx,
        t: &Table<'_, '_>,
        key: &str,
        v: &Node<'_, '_>,
        want: &str,
    ) {
        let got = v.type_name();
        self.err(
            ctx,
            &v.pos,
            &t.path(key),
            format!("expected {want}, found {got}"),
        );
    }

    pub(super) fn string(
        &mut self,
        ctx: &Ctx,
        t: &Table<'_, '_>,
        key: &str,
    ) -> Option<(String, Pos)> {
        let v = t.get(key)?;
        match v.as_str() {
            Some(s) => Some((s.to_string(), v.pos)),
            None => {
                self.wrong_type(ctx, t, key, &v, "a string");
                None
            }
        }
    }

    /// A string that must not be blank when present.
    pub(super) fn nonblank(&mut self, ctx: &Ctx, t: &Table<'_, '_>, key: &str) -> Option<String> {
        let (s, at) = self.string(ctx, t, key)?;
        if s.trim().is_empty() {
            self.err(ctx, &at, &t.path(key), "must not be empty");
            return None;
        }
        Some(s)
    }

    pub(super) fn boolean(
        &mut self,
        ctx: &Ctx,
        t: &Table<'_, '_>,
        key: &str,
        default: bool,
    ) -> bool {
        self.boolean_at(ctx, t, key).map_or(default, |(b, _)| b)
    }

    pub(super) fn boolean_at(
        &mut self,
        ctx: &Ctx,
        t: &Table<'_, '_>,
        key: &str,
    ) -> Option<(bool, Pos)> {
        let v = t.get(key)?;
        match v.as_bool() {
            Some(b) => Some((b, v.pos)),
            None => {
                self.wrong_type(ctx, t, key, &v, "a boolean (true or false)");
                None
            }
        }
    }

    /// An integer in `min..=max`; out of range reports `must be between …` and gives the default.
    pub(super) fn int_range(
        &mut self,
        ctx: &Ctx,
        t: &Table<'_, '_>,
        key: &str,
        default: u32,
        min: i64,
        max: i64,
    ) -> u32 {
        let Some(v) = t.get(key) else {
            return default;
        };
        let Some(n) = v.as_int() else {
            self.wrong_type(ctx, t, key, &v, "an integer");
            return default;
        };
        if n < min || n > max {
            let message = if max == i64::from(u32::MAX) {
                format!("must be at least {min} (got {n})")
            } else {
                format!("must be between {min} and {max} (got {n})")
            };
            self.err(ctx, &v.pos, &t.path(key), message);
            return default;
        }
        n as u32
    }

    pub(super) fn array<'t, 'i>(
        &mut self,
        ctx: &Ctx,
        t: &Table<'t, 'i>,
        key: &str,
    ) -> Option<Array<'t, 'i>> {
        let v = t.get(key)?;
        let array = v.as_array();
        if array.is_none() {
            self.wrong_type(ctx, t, key, &v, "an array");
        }
        array
    }

    /// An array of non-blank strings, trimmed.
    pub(super) fn string_list(&mut self, ctx: &Ctx, t: &Table<'_, '_>, key: &str) -> Vec<String> {
        let Some(items) = self.array(ctx, t, key) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let field = format!("{}[{i}]", t.path(key));
            match item.as_str() {
                Some(s) if !s.trim().is_empty() => out.push(s.trim().to_string()),
                Some(_) => self.err(ctx, &item.pos, &field, "must not be empty"),
                None => self.err(
                    ctx,
                    &item.pos,
                    &field,
                    format!("expected a string, found {}", item.type_name()),
                ),
            }
        }
        out
    }

    pub(super) fn sub_table<'t, 'i>(
        &mut self,
        ctx: &Ctx,
        t: &Table<'t, 'i>,
        key: &str,
    ) -> Option<Table<'t, 'i>> {
        let v = t.get(key)?;
        let table = v.as_table(format!("{}.", t.path(key)));
        if table.is_none() {
            self.wrong_type(ctx, t, key, &v, "a table");
        }
        table
    }

    /// Where `key`'s value is, or the table's start when the key is absent.
    pub(super) fn pos_of(&self, t: &Table<'_, '_>, key: &str) -> Pos {
        t.get(key).map_or_else(|| t.pos.clone(), |v| v.pos)
    }

    /// Reports every key of `t` not in `known`, suggesting the nearest one.
    pub(super) fn unknown_keys(&mut self, ctx: &Ctx, t: &Table<'_, '_>, known: &[&[&str]]) {
        let all: Vec<&str> = known.iter().flat_map(|k| k.iter().copied()).collect();
        for name in t.keys() {
            if all.contains(&name) {
                continue;
            }
            let help = match suggest(name, &all) {
                Some(s) => format!("did you mean `{s}`?"),
                None => format!("valid keys here: {}", all.join(", ")),
            };
            self.err_help(
                ctx,
                &t.key_pos(name),
                &t.path(name),
                format!("unknown key `{name}`"),
                help,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_count_characters() {
        let idx = LineIndex::new("ab\né = 1\n");
        let at = |line, column| Location {
            line,
            column,
            pointer: None,
        };
        assert_eq!(idx.locate(0), at(1, 1));
        assert_eq!(idx.locate(3), at(2, 1));
        assert_eq!(idx.locate(6), at(2, 3));
    }

    #[test]
    fn pointers_escape_tilde_and_slash() {
        assert_eq!(pointer_child("", "a/b~c"), "/a~1b~0c");
        let doc = serde_json::json!({"a/b": {"c": [true]}});
        let root = Node::json(&doc, String::new());
        let Some(table) = root.as_table(String::new()) else {
            panic!("an object is a table");
        };
        let Some(inner) = table.get("a/b").and_then(|v| v.as_table("a/b.".into())) else {
            panic!("nested object");
        };
        let Some(items) = inner.get("c").and_then(|v| v.as_array()) else {
            panic!("array");
        };
        let Some(first) = items.get(0) else {
            panic!("one item");
        };
        assert_eq!(first.pos, Pos::Pointer("/a~1b/c/0".into()));
        assert_eq!(first.as_bool(), Some(true));
        assert_eq!(inner.key_pos("c"), Pos::Pointer("/a~1b/c".into()));
        assert_eq!(inner.path("c"), "a/b.c");
    }

    #[test]
    fn json_type_names_match_toml_words() {
        let doc = serde_json::json!([1, 1.5, "s", true, [], {}, null]);
        let names: Vec<&str> = doc
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|v| Node::json(v, String::new()).type_name())
                    .collect()
            })
            .unwrap_or_default();
        assert_eq!(
            names,
            [
                "an integer",
                "a float",
                "a string",
                "a boolean",
                "an array",
                "a table",
                "null"
            ]
        );
    }
}
