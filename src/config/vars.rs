//! `${name}` and `${name:-default}` substitution, from `--var` first, then the environment.

use std::collections::BTreeMap;

/// Values for `${...}`: those given with `--var`, then (if allowed) the environment.
#[derive(Debug, Clone, Default)]
pub struct Vars {
    pub given: BTreeMap<String, String>,
    pub use_env: bool,
}

impl Vars {
    pub fn new(given: BTreeMap<String, String>) -> Self {
        Vars { given, use_env: true }
    }

    fn lookup(&self, name: &str) -> Option<String> {
        self.given.get(name).cloned().or_else(|| if self.use_env { std::env::var(name).ok() } else { None })
    }
}

/// A substitution error with its line and column (1-based).
#[derive(Debug)]
pub struct SubstError {
    pub at: (usize, usize),
    pub message: String,
}

/// Replaces every `${name}` / `${name:-default}` in `text`; `$${` stays a literal `${`.
/// Returns the new text and each variable used with its value.
pub fn substitute(text: &str, vars: &Vars) -> Result<(String, Vec<(String, String)>), SubstError> {
    let mut out = String::with_capacity(text.len());
    let mut used: Vec<(String, String)> = Vec::new();
    let mut rest = text;
    let mut offset = 0;
    while let Some(i) = rest.find("${") {
        if i > 0 && rest.as_bytes()[i - 1] == b'$' {
            out.push_str(&rest[..i - 1]);
            out.push_str("${");
            offset += i + 2;
            rest = &rest[i + 2..];
            continue;
        }
        out.push_str(&rest[..i]);
        let start = offset + i;
        let after = &rest[i + 2..];
        let Some(end) = after.find('}') else {
            return Err(SubstError { at: line_col(text, start), message: "unterminated `${`".into() });
        };
        let inner = &after[..end];
        let (name, default) = match inner.split_once(":-") {
            Some((n, d)) => (n.trim(), Some(d)),
            None => (inner.trim(), None),
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(SubstError {
                at: line_col(text, start),
                message: format!("`${{{inner}}}`: a variable name is letters, digits and `_`"),
            });
        }
        let value = match (vars.lookup(name), default) {
            (Some(v), _) => v,
            (None, Some(d)) => d.to_string(),
            (None, None) => {
                return Err(SubstError {
                    at: line_col(text, start),
                    message: format!(
                        "variable `{name}` is not set; pass --var {name}=VALUE or give a default with `${{{name}:-VALUE}}`"
                    ),
                });
            }
        };
        out.push_str(&value);
        if !used.iter().any(|(n, _)| n == name) {
            used.push((name.to_string(), value));
        }
        offset = start + 2 + end + 1;
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok((out, used))
}

fn line_col(text: &str, byte: usize) -> (usize, usize) {
    let before = &text[..byte];
    let line = before.matches('\n').count() + 1;
    let column = before.rfind('\n').map_or(byte, |nl| byte - nl - 1) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vars {
        Vars { given: pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(), use_env: false }
    }

    #[test]
    fn given_default_and_escape() {
        let (out, used) = substitute("a: ${x}\nb: ${y:-dflt}\nc: $${z}", &vars(&[("x", "1")])).unwrap();
        assert_eq!(out, "a: 1\nb: dflt\nc: ${z}");
        assert_eq!(used, vec![("x".into(), "1".into()), ("y".into(), "dflt".into())]);
    }

    #[test]
    fn given_wins_over_default() {
        let (out, _) = substitute("${input:-../examples}/crm", &vars(&[("input", "s3://b/p")])).unwrap();
        assert_eq!(out, "s3://b/p/crm");
    }

    #[test]
    fn unset_variable_is_located() {
        let err = substitute("a: 1\nb: x ${run_date}\n", &vars(&[])).unwrap_err();
        assert_eq!(err.at, (2, 6));
        assert!(err.message.contains("--var run_date="));
    }

    #[test]
    fn environment_is_read_when_allowed() {
        let v = Vars { given: BTreeMap::new(), use_env: true };
        let (out, _) = substitute("${PATH}", &v).unwrap();
        assert_eq!(out, std::env::var("PATH").unwrap());
    }

    #[test]
    fn bad_syntax() {
        assert!(substitute("${a b}", &vars(&[])).is_err());
        assert!(substitute("x ${open", &vars(&[])).is_err());
    }
}
