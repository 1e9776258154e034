//! The model's own Jinja chat template, rendered the way HF transformers renders it
//! (trim_blocks + lstrip_blocks, Python string methods, `raise_exception`, a `tojson`
//! that writes like Python's json.dumps), so prompts match the reference to the token.

use std::path::Path;

use minijinja::{Environment, ErrorKind as JinjaErrorKind, Value};
use serde::Serialize;

use vlm_contract::files::ModelDir;
use vlm_contract::request::{Content, Message};
use vlm_contract::{Error, Result};

const TEMPLATE_NAME: &str = "chat";

/// A compiled chat template plus the special-token strings it may refer to.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: Option<String>,
    eos_token: Option<String>,
}

#[derive(Serialize)]
struct TemplateMessage {
    role: &'static str,
    content: Vec<TemplateContent>,
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum TemplateContent {
    Image {},
    Text { text: String },
}

impl ChatTemplate {
    /// Compiles `source`.
    pub fn new(source: &str, bos_token: Option<String>, eos_token: Option<String>) -> Result<Self> {
        let mut env = Environment::new();
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| Error::Template(e.to_string()))?;
        env.set_syntax(syntax);
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> std::result::Result<Value, minijinja::Error> {
                Err(minijinja::Error::new(JinjaErrorKind::InvalidOperation, msg))
            },
        );
        env.add_filter("tojson", python_tojson);
        env.add_template_owned(TEMPLATE_NAME, source.to_string())
            .map_err(|e| Error::Template(e.to_string()))?;
        Ok(Self {
            env,
            bos_token,
            eos_token,
        })
    }

    /// Finds the template in a model folder: chat_template.jinja, chat_template.json, then
    /// tokenizer_config.json's `chat_template` (the order HF processors use).
    pub fn from_model_dir(dir: &ModelDir) -> Result<Self> {
        let tokenizer_config: Option<serde_json::Value> =
            read_optional_json(&dir.path("tokenizer_config.json"))?;
        let token = |key: &str| -> Option<String> {
            let v = tokenizer_config.as_ref()?.get(key)?;
            v.as_str()
                .map(str::to_string)
                .or_else(|| v.get("content")?.as_str().map(str::to_string))
        };
        let (bos, eos) = (token("bos_token"), token("eos_token"));
        let jinja = dir.path("chat_template.jinja");
        if jinja.is_file() {
            let src = std::fs::read_to_string(&jinja).map_err(|e| Error::bad_file(&jinja, e))?;
            return Self::new(&src, bos, eos);
        }
        if let Some(v) = read_optional_json(&dir.path("chat_template.json"))? {
            if let Some(src) = v.get("chat_template").and_then(|t| t.as_str()) {
                return Self::new(src, bos, eos);
            }
        }
        if let Some(src) = tokenizer_config
            .as_ref()
            .and_then(|c| template_from_tokenizer_config(c.get("chat_template")?))
        {
            return Self::new(&src, bos, eos);
        }
        Err(Error::MissingFile {
            path: dir.path("chat_template.json"),
            hint: "no chat template found (chat_template.jinja, chat_template.json or tokenizer_config.json's chat_template); copy it from the original model repo, or pass a raw prompt".into(),
        })
    }

    /// Renders `messages` with `add_generation_prompt`.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let msgs: Vec<TemplateMessage> = messages
            .iter()
            .map(|m| TemplateMessage {
                role: m.role.as_str(),
                content: m
                    .content
                    .iter()
                    .map(|c| match c {
                        Content::Image => TemplateContent::Image {},
                        Content::Text(t) => TemplateContent::Text { text: t.clone() },
                    })
                    .collect(),
            })
            .collect();
        let tmpl = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| Error::Template(e.to_string()))?;
        tmpl.render(minijinja::context! {
            messages => Value::from(minijinja::value::Serde(&msgs)),
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token.clone().unwrap_or_default(),
            eos_token => self.eos_token.clone().unwrap_or_default(),
        })
        .map_err(|e| Error::Template(format!("{e:#}")))
    }
}

fn template_from_tokenizer_config(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        // a list of named templates: take "default"
        serde_json::Value::Array(list) => list
            .iter()
            .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
            .and_then(|t| t.get("template")?.as_str().map(str::to_string)),
        _ => None,
    }
}

fn read_optional_json(path: &Path) -> Result<Option<serde_json::Value>> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::bad_file(path, e))?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| Error::bad_file(path, e))
}

/// HF's `tojson`: `json.dumps(x, ensure_ascii=False)` with Python's `", "` / `": "`
/// separators, or `indent` spaces when given.
fn python_tojson(
    value: Value,
    indent: Option<usize>,
) -> std::result::Result<Value, minijinja::Error> {
    let json = serde_json::to_value(&value)
        .map_err(|e| minijinja::Error::new(JinjaErrorKind::InvalidOperation, e.to_string()))?;
    let mut out = String::new();
    write_py_json(&json, indent, 0, &mut out);
    Ok(Value::from_safe_string(out))
}

fn write_py_json(v: &serde_json::Value, indent: Option<usize>, depth: usize, out: &mut String) {
    use serde_json::Value as J;
    let newline = |out: &mut String, depth: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * depth));
        }
    };
    let item_sep = if indent.is_some() { "," } else { ", " };
    match v {
        J::Array(items) if !items.is_empty() => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, depth + 1);
                write_py_json(item, indent, depth + 1, out);
            }
            newline(out, depth);
            out.push(']');
        }
        J::Object(map) if !map.is_empty() => {
            out.push('{');
            for (i, (k, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, depth + 1);
                out.push_str(&serde_json::to_string(k).unwrap_or_default());
                out.push_str(": ");
                write_py_json(item, indent, depth + 1, out);
            }
            newline(out, depth);
            out.push('}');
        }
        other => out.push_str(&serde_json::to_string(other).unwrap_or_default()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vlm_contract::request::Role;

    #[test]
    fn renders_with_hf_whitespace_rules_and_python_methods() {
        let src = "{% for m in messages %}\n  <{{ m.role }}>{% for c in m.content %}{% if c.type == 'image' %}[IMG]{% else %}{{ c.text.strip() }}{% endif %}{% endfor %}\n{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}";
        let t = ChatTemplate::new(src, None, None).unwrap();
        let out = t
            .render(&[Message::user_with_images(1, "  hi  ")], true)
            .unwrap();
        // what jinja2 with trim_blocks + lstrip_blocks renders for the same template
        assert_eq!(out, "  <user>[IMG]hi<assistant>");
    }

    #[test]
    fn raise_exception_becomes_a_template_error() {
        let t = ChatTemplate::new("{{ raise_exception('only user turns') }}", None, None).unwrap();
        let err = t
            .render(&[Message::text(Role::System, "x")], true)
            .unwrap_err();
        assert!(err.to_string().contains("only user turns"), "{err}");
    }

    #[test]
    fn tojson_writes_like_python() {
        let t =
            ChatTemplate::new("{{ {'a': [1, '中'], 'b': none} | tojson }}", None, None).unwrap();
        assert_eq!(
            t.render(&[], false).unwrap(),
            r#"{"a": [1, "中"], "b": null}"#
        );
    }
}
