//! YAML for configuration files and manifests, through `serde-saphyr` (a maintained, pure-Rust,
//! panic-free parser; `serde_yaml` is deprecated). Errors name the field at fault
//! (`drivers[0].command`) and where in the text.

use serde::de::DeserializeOwned;

/// A document that does not deserialize: the field at fault (`.` when the document as a whole
/// is) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct YamlError {
    /// The path of the field, e.g. `drivers[0].command`.
    pub field: String,
    /// Why, with the line and column where the parser knows them.
    pub message: String,
}

impl std::fmt::Display for YamlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl std::error::Error for YamlError {}

/// One YAML document as `T`.
pub fn from_str<T: DeserializeOwned>(text: &str) -> Result<T, YamlError> {
    let mut field = String::from(".");
    serde_saphyr::with_deserializer_from_str(text, |de| {
        serde_path_to_error::deserialize(de).map_err(|e| {
            field = e.path().to_string();
            e.into_inner()
        })
    })
    .map_err(|e| YamlError {
        field,
        message: e.to_string(),
    })
}

/// Every document of a YAML stream as `T` (empty documents left out).
pub fn documents<T: DeserializeOwned>(text: &str) -> Result<Vec<T>, YamlError> {
    serde_saphyr::from_multiple(text).map_err(|e| YamlError {
        field: ".".into(),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Cfg {
        name: String,
        #[serde(default)]
        items: Vec<Item>,
    }

    #[derive(Debug, serde::Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Item {
        port: u16,
    }

    #[test]
    fn errors_name_the_field() {
        let ok: Cfg = from_str("name: a\nitems: [{port: 80}]\n").unwrap();
        assert_eq!(ok.items, [Item { port: 80 }]);
        let e = from_str::<Cfg>("name: a\nitems:\n- port: 80\n- port: 70000\n").unwrap_err();
        assert_eq!(e.field, "items[1].port");
        let e = from_str::<Cfg>("name: a\nextra: 1\n").unwrap_err();
        assert!(e.message.contains("extra"), "{e}");
        assert!(from_str::<Cfg>("name: [unclosed\n").is_err());
    }

    #[test]
    fn documents_of_a_stream() {
        let docs: Vec<serde_json::Value> = documents("---\na: 1\n---\nb: two\n").unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[1]["b"], "two");
    }
}
