//! The built-in configurations (`train/configs/*.toml`), compiled into the binaries so
//! that they run from any folder: `--config gpt2-small` names one, `--list-configs`
//! prints them all.

const BUILTIN: [(&str, &str); 12] = [
    ("gpt2-tiny", include_str!("../../configs/gpt2-tiny.toml")),
    ("gpt2-mini", include_str!("../../configs/gpt2-mini.toml")),
    ("gpt2-small", include_str!("../../configs/gpt2-small.toml")),
    ("gpt2-medium", include_str!("../../configs/gpt2-medium.toml")),
    ("vit-tiny", include_str!("../../configs/vit-tiny.toml")),
    ("vit-fashion", include_str!("../../configs/vit-fashion.toml")),
    ("vit-s", include_str!("../../configs/vit-s.toml")),
    ("vit-b", include_str!("../../configs/vit-b.toml")),
    ("mixer-tiny", include_str!("../../configs/mixer-tiny.toml")),
    ("mixer-fashion", include_str!("../../configs/mixer-fashion.toml")),
    ("mixer-s", include_str!("../../configs/mixer-s.toml")),
    ("mixer-b", include_str!("../../configs/mixer-b.toml")),
];

/// The text of built-in configuration `name` (with or without `.toml`).
pub fn builtin(name: &str) -> Option<&'static str> {
    let name = name.strip_suffix(".toml").unwrap_or(name);
    BUILTIN.iter().find(|(n, _)| *n == name).map(|(_, text)| *text)
}

/// The names of the built-in configurations.
pub fn names() -> Vec<&'static str> {
    BUILTIN.iter().map(|(n, _)| *n).collect()
}
