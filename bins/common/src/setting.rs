//! One home for a setting: its key in our format, its key in KubeEdge's file, its flag and
//! environment variable, its default and its check, declared once with [`settings!`].
//!
//! How this fits: each binary's `settings` module declares every setting it has in one
//! [`settings!`] block. The macro generates the binary's clap `Flags`, the strict reader of our
//! format, and a values struct whose `resolve` layers each setting (default < file <
//! environment variable and flag) from a [`Source`], checking every value where it was set, so
//! an error names the key and the file, or the flag. The result is one [`Setting`] per key,
//! which remembers where its value came from; what ties several settings together (a listener
//! set in two places, a deadline that must exceed an interval) stays in the binary and uses
//! those origins in its own errors.
//!
//! Our format is read strictly (an unknown key is an error listing the keys that would fit),
//! through serde and `serde_path_to_error` as before, but against the declared key paths rather
//! than a tree of hand-written structs: the dotted paths are the schema. KubeEdge's files are
//! read by key path through [`Doc`], where unknown keys are harmless.
//!
//! [`settings!`]: crate::settings!

use std::borrow::Borrow;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, Visitor};

use crate::kubeedge::{self, ConfigError, Doc};
use crate::tether_file::{self, Format, Origin, SettingsError, key_error};

/// What the macro re-exports for its expansion; not part of the API.
#[doc(hidden)]
pub mod __private {
    pub use serde;
}

/// The value of one setting after layering, and where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Setting<V> {
    /// The value in force: the flag's, else the file's, else the default.
    pub value: V,
    /// Where [`Setting::value`] came from.
    pub origin: Origin,
    /// The setting's key in the format being read (ours, or KubeEdge's when it has one there):
    /// what an error about a default names.
    pub key: &'static str,
    /// Whether the file sets it, even when a flag overrides it (to refuse a value set in two
    /// places of the same file).
    pub in_file: bool,
}

impl<V> Setting<V> {
    /// An error about the value: names the flag that set it, else its key and the file.
    pub fn error(&self, file: &Path, problem: String) -> SettingsError {
        self.origin.error(file, self.key, problem)
    }
}

impl<T> Setting<Option<T>> {
    /// The setting with `default` where no layer set it.
    pub fn or_default(self, default: T) -> Setting<T> {
        Setting {
            value: self.value.unwrap_or(default),
            origin: self.origin,
            key: self.key,
            in_file: self.in_file,
        }
    }

    /// The setting if some layer set it.
    pub fn present(self) -> Option<Setting<T>> {
        let Setting {
            value,
            origin,
            key,
            in_file,
        } = self;
        value.map(|value| Setting {
            value,
            origin,
            key,
            in_file,
        })
    }
}

impl Setting<PathBuf> {
    /// Checks that the file the setting names can be opened for reading (`load` does this for
    /// every file a setting names, once the settings are complete), naming the flag or the key.
    pub fn check_readable(&self, file: &Path) -> Result<(), SettingsError> {
        kubeedge::check_file(&self.value)
            .map_err(|error| self.error(file, format!("{}: {error}", self.value.display())))
    }
}

/// Reads a setting from KubeEdge's file: `Ok(None)` when absent, an error naming the key and
/// the file when the value has the wrong type.
pub type KubeEdgeReader<T> = fn(&Doc<'_>, &str) -> Result<Option<T>, ConfigError>;

type Check<T> = Box<dyn Fn(&T) -> Result<(), String>>;

/// One setting being layered: what [`settings!`] builds from a declaration. Used directly only
/// by the macro's expansion.
///
/// [`settings!`]: crate::settings!
pub struct Key<T> {
    path: &'static str,
    kubeedge: Option<(&'static str, KubeEdgeReader<T>)>,
    flag: Option<(&'static str, Option<T>)>,
    check: Option<Check<T>>,
}

impl<T: 'static> Key<T> {
    /// The setting at `path` (dotted) of our format.
    pub fn new(path: &'static str) -> Self {
        Key {
            path,
            kubeedge: None,
            flag: None,
            check: None,
        }
    }

    /// Also read from `path` of KubeEdge's file, with `read`.
    pub fn kubeedge(mut self, path: &'static str, read: KubeEdgeReader<T>) -> Self {
        self.kubeedge = Some((path, read));
        self
    }

    /// Overridden by `flag` (`--name`), whose parsed value (or its environment variable's) is
    /// `value`.
    pub fn flag(mut self, flag: &'static str, value: Option<T>) -> Self {
        self.flag = Some((flag, value));
        self
    }

    /// Every value set (file or flag, not the default) must pass `check`, which says what is
    /// wrong. It may take a borrowed form of the value (`&Path` for a `PathBuf`).
    pub fn check<U, C>(mut self, check: C) -> Self
    where
        T: Borrow<U>,
        U: ?Sized,
        C: Fn(&U) -> Result<(), String> + 'static,
    {
        self.check = Some(Box::new(move |value: &T| check(value.borrow())));
        self
    }

    /// Layers the setting: the flag, else the file (our format's value from `ours`, or
    /// KubeEdge's key), else nothing; every value present is checked, the file's even when a
    /// flag overrides it.
    pub fn layer<F>(
        self,
        source: &Source<'_, F>,
        ours: impl FnOnce(&F) -> Option<T>,
    ) -> Result<Setting<Option<T>>, SettingsError> {
        let file = source.file;
        let (from_file, key) = match &source.form {
            Form::Tether { values, .. } => (ours(values).map(|v| (v, self.path)), self.path),
            Form::KubeEdge(doc) => match self.kubeedge {
                Some((path, read)) => (read(doc, path)?.map(|v| (v, path)), path),
                None => (None, self.path),
            },
        };
        let from_flag = self
            .flag
            .and_then(|(flag, value)| value.map(|value| (flag, value)));
        if let Some(check) = &self.check {
            if let Some((value, key)) = &from_file {
                check(value).map_err(|problem| key_error(file, key, problem))?;
            }
            if let Some((flag, value)) = &from_flag {
                check(value).map_err(|problem| SettingsError::Flag { flag, problem })?;
            }
        }
        let in_file = from_file.is_some();
        let (value, origin) = match (from_flag, from_file) {
            (Some((flag, value)), _) => (Some(value), Origin::Flag(flag)),
            (None, Some((value, key))) => (Some(value), Origin::Key(key.to_owned())),
            (None, None) => (None, Origin::Default),
        };
        Ok(Setting {
            value,
            origin,
            key,
            in_file,
        })
    }
}

/// The keys of our format a binary declared, as [`settings!`] implements it for its file
/// struct: the schema of the strict reader.
///
/// [`settings!`]: crate::settings!
pub trait FileKeys: Default {
    /// Every key path, dotted, in declaration order.
    const KEYS: &'static [&'static str];

    /// Deserializes the value of `key` (one of [`FileKeys::KEYS`]) into its field.
    fn set<'de, D: Deserializer<'de>>(&mut self, key: &str, value: D) -> Result<(), D::Error>;
}

/// The configuration file being read, in either format, ready for [`Key::layer`].
#[derive(Debug)]
pub struct Source<'a, F> {
    file: &'a Path,
    form: Form<'a, F>,
}

#[derive(Debug)]
enum Form<'a, F> {
    /// Our format, read strictly: the values of the declared keys, and which sections
    /// (mappings between the top level and the keys) are present and not null.
    Tether { values: F, sections: Vec<String> },
    /// KubeEdge's file, looked up key by key.
    KubeEdge(Doc<'a>),
}

impl<'a, F: FileKeys> Source<'a, F> {
    /// Reads `text` of `file` as our format: only the declared keys (plus `apiVersion` and
    /// `kind`, which must be present) may appear, and `kind` must be `kind`.
    pub fn tether(text: &str, file: &'a Path, kind: &str) -> Result<Self, SettingsError> {
        let mut parsed = Parsed {
            values: F::default(),
            sections: Vec::new(),
            api_version: None,
            kind: None,
        };
        tether_file::from_yaml(Top(&mut parsed), text, file)?;
        tether_file::check_kind(file, parsed.kind.as_deref().unwrap_or_default(), kind)?;
        Ok(Source {
            file,
            form: Form::Tether {
                values: parsed.values,
                sections: parsed.sections,
            },
        })
    }
}

impl<'a, F> Source<'a, F> {
    /// Reads `text` of `file` as KubeEdge's file, which must be of `api_group` when it names
    /// one.
    pub fn kubeedge(text: &str, file: &'a Path, api_group: &str) -> Result<Self, SettingsError> {
        let doc = Doc::parse(text, file)?;
        doc.check_api_group(api_group)?;
        Ok(Source {
            file,
            form: Form::KubeEdge(doc),
        })
    }

    /// The configuration file.
    pub fn file(&self) -> &'a Path {
        self.file
    }

    /// Its format.
    pub fn format(&self) -> Format {
        match self.form {
            Form::Tether { .. } => Format::Tether,
            Form::KubeEdge(_) => Format::KubeEdge,
        }
    }

    /// KubeEdge's file, for the keys that exist only there (`enable`).
    pub fn kubeedge_doc(&self) -> Option<&Doc<'a>> {
        match &self.form {
            Form::KubeEdge(doc) => Some(doc),
            Form::Tether { .. } => None,
        }
    }

    /// Whether our format has the section at `path` (e.g. `kubelet.tls`) and it is not null,
    /// even if empty: for sections whose presence means something. Always `false` for
    /// KubeEdge's file.
    pub fn has_section(&self, path: &str) -> bool {
        match &self.form {
            Form::Tether { sections, .. } => sections.iter().any(|s| s == path),
            Form::KubeEdge(_) => false,
        }
    }
}

/// What the strict reader collects.
struct Parsed<F> {
    values: F,
    sections: Vec<String>,
    api_version: Option<String>,
    kind: Option<String>,
}

/// The keys of our format every binary has, besides its declared ones.
const TOP_KEYS: [&str; 2] = ["apiVersion", "kind"];

/// The top level of our format.
struct Top<'p, F>(&'p mut Parsed<F>);

impl<'de, F: FileKeys> DeserializeSeed<'de> for Top<'_, F> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(Mapping {
            parsed: self.0,
            prefix: String::new(),
        })
    }
}

/// A section below the top level: a mapping, or null (the same as absent).
struct Section<'p, F> {
    parsed: &'p mut Parsed<F>,
    prefix: String,
}

impl<'de, F: FileKeys> DeserializeSeed<'de> for Section<'_, F> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_option(Mapping {
            parsed: self.parsed,
            prefix: self.prefix,
        })
    }
}

/// Reads the mapping at `prefix` (empty: the top level), key by key.
struct Mapping<'p, F> {
    parsed: &'p mut Parsed<F>,
    prefix: String,
}

impl<'de, F: FileKeys> Visitor<'de> for Mapping<'_, F> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a mapping")
    }

    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let Mapping { parsed, prefix } = self;
        let top = prefix.is_empty();
        let mut expected = if top {
            TOP_KEYS.to_vec()
        } else {
            parsed.sections.push(prefix.clone());
            Vec::new()
        };
        for name in children(F::KEYS, &prefix) {
            if !expected.contains(&name) {
                expected.push(name);
            }
        }
        let mut seen: Vec<String> = Vec::new();
        while let Some(name) = map.next_key_seed(Name {
            expected: &expected,
        })? {
            if seen.contains(&name) {
                return Err(de::Error::custom(format_args!("duplicate field `{name}`")));
            }
            seen.push(name.clone());
            match name.as_str() {
                "apiVersion" if top => parsed.api_version = Some(map.next_value()?),
                "kind" if top => parsed.kind = Some(map.next_value()?),
                _ => {
                    let path = if top {
                        name
                    } else {
                        format!("{prefix}.{name}")
                    };
                    if F::KEYS.contains(&path.as_str()) {
                        map.next_value_seed(Leaf {
                            values: &mut parsed.values,
                            key: &path,
                        })?;
                    } else {
                        map.next_value_seed(Section {
                            parsed: &mut *parsed,
                            prefix: path,
                        })?;
                    }
                }
            }
        }
        if top {
            if parsed.api_version.is_none() {
                return Err(de::Error::missing_field("apiVersion"));
            }
            if parsed.kind.is_none() {
                return Err(de::Error::missing_field("kind"));
            }
        }
        Ok(())
    }
}

/// The names one level below `prefix` that lead to declared keys, in declaration order.
fn children(keys: &'static [&'static str], prefix: &str) -> Vec<&'static str> {
    let mut names = Vec::new();
    for key in keys {
        let rest = if prefix.is_empty() {
            Some(*key)
        } else {
            key.strip_prefix(prefix).and_then(|r| r.strip_prefix('.'))
        };
        if let Some(name) = rest.and_then(|r| r.split('.').next())
            && !names.contains(&name)
        {
            names.push(name);
        }
    }
    names
}

/// A key of a mapping, which must be one of `expected`. The check happens while the key is
/// read, as in serde's derived code, so the error's path ends with the unknown key.
struct Name<'e> {
    expected: &'e [&'static str],
}

impl<'de> DeserializeSeed<'de> for Name<'_> {
    type Value = String;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<String, D::Error> {
        d.deserialize_identifier(self)
    }
}

impl Visitor<'_> for Name<'_> {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a key name")
    }

    fn visit_str<E: de::Error>(self, name: &str) -> Result<String, E> {
        if self.expected.contains(&name) {
            Ok(name.to_owned())
        } else {
            Err(E::custom(unknown_field(name, self.expected)))
        }
    }
}

/// serde's own message for an unknown field (`de::Error::unknown_field` wants a `'static`
/// list, and ours is computed per mapping).
fn unknown_field(name: &str, expected: &[&str]) -> String {
    let quoted: Vec<String> = expected.iter().map(|e| format!("`{e}`")).collect();
    match quoted.as_slice() {
        [] => format!("unknown field `{name}`, there are no fields"),
        [one] => format!("unknown field `{name}`, expected {one}"),
        [a, b] => format!("unknown field `{name}`, expected {a} or {b}"),
        all => format!("unknown field `{name}`, expected one of {}", all.join(", ")),
    }
}

/// The value of one declared key.
struct Leaf<'p, 'k, F> {
    values: &'p mut F,
    key: &'k str,
}

impl<'de, F: FileKeys> DeserializeSeed<'de> for Leaf<'_, '_, F> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        self.values.set(self.key, d)
    }
}

/// Declares a binary's settings once each, and generates from the declarations: its clap flags
/// struct, the strict reader of our format, and a values struct whose `resolve` layers every
/// setting.
///
/// ```
/// use std::time::Duration;
/// use tether_cli::check;
/// use tether_cli::kubeedge::Doc;
/// use tether_cli::setting::Source;
/// use tether_cli::tether_file;
///
/// tether_cli::settings! {
///     /// Flags of `demo`; they override the file.
///     pub struct Flags {
///         // Flags that are no setting's, written as clap fields.
///     }
///     /// Every setting of `demo`, layered.
///     pub struct Values;
///     /// The keys of `demo`'s file.
///     struct FileValues;
///
///     /// Port of the listener (help text of no flag: this key has none).
///     port: u16 {
///         key: "server.port",
///         kubeedge: "modules.server.port" => Doc::port,
///         default: 8080,
///         check: check::port,
///     }
///     /// How long a request may take, e.g. 5s.
///     timeout: Duration {
///         key: "server.timeout",
///         yaml: tether_file::duration,
///         flag: ("timeout", env = "DEMO_TIMEOUT", value_name = "DURATION",
///                value_parser = tether_file::duration_flag),
///         default: Duration::from_secs(5),
///         check: check::positive,
///     }
///     /// Name to greet (no default: `None` when unset).
///     name: String {
///         key: "name",
///         flag: ("name", env = "DEMO_NAME"),
///     }
/// }
///
/// # fn main() -> Result<(), tether_file::SettingsError> {
/// let file = std::path::Path::new("/etc/demo.yaml");
/// let text = "apiVersion: tether.io/v1alpha1\nkind: Demo\nserver:\n  port: 81\n";
/// let source = Source::<FileValues>::tether(text, file, "Demo")?;
/// let flags = Flags { timeout: Some(Duration::from_secs(1)), ..Flags::default() };
/// let values = Values::resolve(&source, &flags)?;
/// assert_eq!(values.port.value, 81);
/// assert_eq!(values.timeout.value, Duration::from_secs(1));
/// assert_eq!(values.name.value, None);
/// # Ok(())
/// # }
/// ```
///
/// Each declaration names, in this order (all but `key` optional):
/// - `key`: the dotted path in our format;
/// - `yaml`: how our format's value is deserialized, a function like
///   [`crate::tether_file::duration`] (default: the type's `Option<T>` serde impl);
/// - `kubeedge`: the dotted path in KubeEdge's file `=>` its [`KubeEdgeReader`];
/// - `flag`: the flag's name and further clap `#[arg]` settings (env var, value name, value
///   parser); its doc comment is the help text;
/// - `default`: the value when nothing sets it; without one the value is an `Option`;
/// - `check`: what every value set must pass ([`crate::check`] has the common ones).
///
/// `resolve` is private to the module that declares the settings.
#[macro_export]
macro_rules! settings {
    (
        $(#[$flags_meta:meta])*
        $flags_vis:vis struct $Flags:ident { $($extra_flags:tt)* }
        $(#[$values_meta:meta])*
        $values_vis:vis struct $Values:ident;
        $(#[$file_meta:meta])*
        struct $File:ident;

        $(
            $(#[doc = $doc:literal])*
            $field:ident : $T:ty {
                key: $key:literal,
                $(yaml: $yaml:path,)?
                $(kubeedge: $ke:literal => $ke_read:path,)?
                $(flag: ($long:literal $($arg:tt)*),)?
                $(default: $default:expr,)?
                $(check: $check:expr,)?
            }
        )*
    ) => {
        $crate::__settings_flags! {
            [$(#[$flags_meta])*] $flags_vis $Flags [$($extra_flags)*] {}
            $( [$(#[doc = $doc])*] $field : $T [$($long $($arg)*)?], )*
        }

        $(#[$values_meta])*
        #[derive(Debug, Clone)]
        $values_vis struct $Values {
            $(
                $(#[doc = $doc])*
                pub $field: $crate::__settings_type!($T $(, $default)?),
            )*
        }

        $(#[$file_meta])*
        #[derive(Debug, Default)]
        struct $File {
            $( $field: ::core::option::Option<$T>, )*
        }

        impl $crate::setting::FileKeys for $File {
            const KEYS: &'static [&'static str] = &[$($key),*];

            fn set<'de, D>(&mut self, key: &str, value: D) -> ::core::result::Result<(), D::Error>
            where
                D: $crate::setting::__private::serde::Deserializer<'de>,
            {
                $(
                    if key == $key {
                        self.$field = $crate::__settings_yaml!(value, $T $(, $yaml)?)?;
                        return ::core::result::Result::Ok(());
                    }
                )*
                ::core::result::Result::Err(
                    <D::Error as $crate::setting::__private::serde::de::Error>::custom(
                        ::core::format_args!("{key} is no declared setting"),
                    ),
                )
            }
        }

        impl $Values {
            /// Layers every setting from `source` and `flags`: the flag (or its environment
            /// variable), else the file, else the default; every value set is checked, and an
            /// error names the key and the file, or the flag.
            fn resolve(
                source: &$crate::setting::Source<'_, $File>,
                flags: &$Flags,
            ) -> ::core::result::Result<Self, $crate::tether_file::SettingsError> {
                let _ = flags; // unused when no setting has a flag
                ::core::result::Result::Ok($Values {
                    $(
                        $field: $crate::__settings_default!(
                            $crate::setting::Key::<$T>::new($key)
                                $(.kubeedge($ke, |doc, key| $ke_read(doc, key)))?
                                $(.flag(::core::concat!("--", $long), flags.$field.clone()))?
                                $(.check($check))?
                                .layer(source, |file| file.$field.clone())?
                            $(, $default)?
                        ),
                    )*
                })
            }
        }
    };
}

/// The flags struct of [`settings!`]: one `Option` field per declaration with a `flag`, then
/// the extra fields as written.
#[doc(hidden)]
#[macro_export]
macro_rules! __settings_flags {
    (
        [$($meta:tt)*] $vis:vis $Flags:ident [$($extra:tt)*] { $($fields:tt)* }
    ) => {
        $($meta)*
        #[derive(Debug, Clone, Default, clap::Args)]
        $vis struct $Flags {
            $($fields)*
            $($extra)*
        }
    };
    (
        $meta:tt $vis:vis $Flags:ident $extra:tt { $($fields:tt)* }
        [$($doc:tt)*] $field:ident : $T:ty [], $($rest:tt)*
    ) => {
        $crate::__settings_flags! { $meta $vis $Flags $extra { $($fields)* } $($rest)* }
    };
    (
        $meta:tt $vis:vis $Flags:ident $extra:tt { $($fields:tt)* }
        [$($doc:tt)*] $field:ident : $T:ty [$long:literal $($arg:tt)*], $($rest:tt)*
    ) => {
        $crate::__settings_flags! {
            $meta $vis $Flags $extra {
                $($fields)*
                $($doc)*
                #[arg(long = $long $($arg)*)]
                // Spelled `Option`, not by its full path: clap's derive recognises an optional
                // argument by that name.
                pub $field: Option<$T>,
            }
            $($rest)*
        }
    };
}

/// The value type of a declaration: `T` with a default, `Option<T>` without.
#[doc(hidden)]
#[macro_export]
macro_rules! __settings_type {
    ($T:ty) => { $crate::setting::Setting<::core::option::Option<$T>> };
    ($T:ty, $default:expr) => { $crate::setting::Setting<$T> };
}

/// Applies a declaration's default, if it has one.
#[doc(hidden)]
#[macro_export]
macro_rules! __settings_default {
    ($setting:expr) => {
        $setting
    };
    ($setting:expr, $default:expr) => {
        $setting.or_default($default)
    };
}

/// Deserializes a declaration's value of our format.
#[doc(hidden)]
#[macro_export]
macro_rules! __settings_yaml {
    ($value:ident, $T:ty) => {
        <::core::option::Option<$T> as $crate::setting::__private::serde::Deserialize>::deserialize(
            $value,
        )
    };
    ($value:ident, $T:ty, $yaml:path) => {
        $yaml($value)
    };
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::time::Duration;

    use super::*;
    use crate::check;
    use crate::tether_file::duration;

    crate::settings! {
        /// Flags of the test binary.
        pub struct Flags {
            /// A flag that is no setting's.
            #[arg(long)]
            pub other: bool,
        }
        /// The test binary's settings.
        pub struct Values;
        /// Its file.
        struct FileValues;

        /// A port.
        port: u16 {
            key: "server.port",
            kubeedge: "modules.server.port" => Doc::port,
            default: 80,
            check: check::port,
        }
        /// A duration with a flag.
        wait: Duration {
            key: "server.wait",
            yaml: duration,
            flag: ("wait", value_parser = crate::tether_file::duration_flag),
            default: Duration::from_secs(5),
            check: check::positive,
        }
        /// A nested section's file, no default.
        ca: PathBuf {
            key: "server.tls.caFile",
            kubeedge: "modules.server.caFile" => Doc::path,
            flag: ("ca", env = "TETHER_CLI_TEST_CA"),
            check: check::file_path,
        }
        /// A top-level switch.
        on: bool {
            key: "on",
            default: false,
        }
    }

    const FILE: &str = "/etc/tether/test.yaml";

    fn ours(body: &str) -> Result<Source<'static, FileValues>, SettingsError> {
        Source::tether(
            &format!("apiVersion: tether.io/v1alpha1\nkind: Test\n{body}"),
            Path::new(FILE),
            "Test",
        )
    }

    fn resolve(source: &Source<'_, FileValues>, flags: &Flags) -> Result<Values, SettingsError> {
        Values::resolve(source, flags)
    }

    #[test]
    fn defaults_then_file_then_flags() {
        let none = resolve(&ours("").unwrap(), &Flags::default()).unwrap();
        assert_eq!(none.port.value, 80);
        assert_eq!(none.port.origin, Origin::Default);
        assert!(!none.port.in_file);
        assert_eq!(none.ca.value, None);
        assert!(!none.on.value);

        let source =
            ours("server:\n  port: 81\n  wait: 2s\n  tls:\n    caFile: /ca.crt\non: true\n")
                .unwrap();
        let file = resolve(&source, &Flags::default()).unwrap();
        assert_eq!(file.port.value, 81);
        assert_eq!(file.port.origin, Origin::Key("server.port".into()));
        assert_eq!(file.wait.value, Duration::from_secs(2));
        assert_eq!(file.ca.value, Some(PathBuf::from("/ca.crt")));
        assert!(file.on.value);
        assert!(source.has_section("server.tls"));
        assert!(!source.has_section("server.port"));

        let flags = Flags {
            wait: Some(Duration::from_secs(9)),
            ca: Some("/flag.crt".into()),
            ..Flags::default()
        };
        let flagged = resolve(&source, &flags).unwrap();
        assert_eq!(flagged.wait.value, Duration::from_secs(9));
        assert_eq!(flagged.wait.origin, Origin::Flag("--wait"));
        assert!(flagged.wait.in_file, "the file sets it too");
        assert_eq!(flagged.ca.value, Some(PathBuf::from("/flag.crt")));
        assert_eq!(flagged.port.value, 81);
    }

    #[test]
    fn kubeedge_keys_are_read_by_their_own_path() {
        let text = "modules:\n  server:\n    port: 82\n    caFile: /ke.crt\n    other: [ignored]\n\
                    server:\n  wait: nonsense\n";
        let source =
            Source::<FileValues>::kubeedge(text, Path::new(FILE), "x.kubeedge.io").unwrap();
        assert_eq!(source.format(), Format::KubeEdge);
        let values = resolve(&source, &Flags::default()).unwrap();
        assert_eq!(values.port.value, 82);
        assert_eq!(values.port.key, "modules.server.port");
        assert_eq!(
            values.port.origin,
            Origin::Key("modules.server.port".into())
        );
        assert_eq!(values.ca.value, Some(PathBuf::from("/ke.crt")));
        // A setting KubeEdge has no key for keeps its default, named by our key.
        assert_eq!(values.wait.value, Duration::from_secs(5));
        assert_eq!(values.wait.key, "server.wait");

        let bad = Source::<FileValues>::kubeedge(
            "modules:\n  server:\n    port: 0\n",
            Path::new(FILE),
            "x.kubeedge.io",
        )
        .unwrap();
        let message = resolve(&bad, &Flags::default()).unwrap_err().to_string();
        assert_eq!(
            message,
            format!(
                "modules.server.port: expected a port number from 1 to 65535, found 0 (in {FILE})"
            )
        );
    }

    #[test]
    fn errors_name_the_key_and_the_file_or_the_flag() {
        for (body, key) in [
            ("bogus: 1\n", "bogus"),
            ("server:\n  bogus: 1\n", "server.bogus"),
            ("server:\n  tls:\n    keyFile: /k\n", "server.tls.keyFile"),
            ("server:\n  wait: 5\n", "server.wait"),
            ("server:\n  port: 70000\n", "server.port"),
            ("server: 5\n", "server"),
            ("on: maybe\n", "on"),
        ] {
            let message = ours(body).unwrap_err().to_string();
            assert!(
                message.starts_with(&format!("{key}: ")),
                "{body:?}: {message}"
            );
            assert!(
                message.ends_with(&format!("(in {FILE})")),
                "{body:?}: {message}"
            );
        }
        // The list of keys that would fit, as serde's derived code words it.
        let message = ours("server:\n  prot: 1\n").unwrap_err().to_string();
        assert!(
            message.starts_with(
                "server.prot: unknown field `prot`, expected one of `port`, `wait`, `tls` at line"
            ),
            "{message}"
        );
        let message = ours("server:\n  tls:\n    ca: 1\n")
            .unwrap_err()
            .to_string();
        assert!(
            message.starts_with("server.tls.ca: unknown field `ca`, expected `caFile` at line"),
            "{message}"
        );
        let message = Source::<FileValues>::tether(
            "apiVersion: tether.io/v1alpha1\n",
            Path::new(FILE),
            "Test",
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            message,
            format!("(top level): missing field `kind` (in {FILE})")
        );

        // Checks run on the file's value and on the flag's.
        let message = resolve(&ours("server:\n  port: 0\n").unwrap(), &Flags::default())
            .unwrap_err()
            .to_string();
        assert_eq!(
            message,
            format!("server.port: expected a port number from 1 to 65535, found 0 (in {FILE})")
        );
        let source = ours("server:\n  tls:\n    caFile: \"\"\n").unwrap();
        let flags = Flags {
            ca: Some("/ok.crt".into()),
            ..Flags::default()
        };
        let message = resolve(&source, &flags).unwrap_err().to_string();
        assert!(
            message.starts_with("server.tls.caFile: expected a file path"),
            "{message}"
        );
        let flags = Flags {
            ca: Some(PathBuf::new()),
            ..Flags::default()
        };
        let message = resolve(&ours("").unwrap(), &flags).unwrap_err().to_string();
        assert_eq!(message, "--ca: expected a file path, found an empty string");
    }

    #[test]
    fn null_sections_and_values_are_absent() {
        let source = ours("server:\n  port: ~\n  tls: ~\non: ~\n").unwrap();
        let values = resolve(&source, &Flags::default()).unwrap();
        assert_eq!(values.port.value, 80);
        assert!(!values.port.in_file);
        assert!(!source.has_section("server.tls"));
        let source = ours("server:\n  tls: {}\n").unwrap();
        assert!(source.has_section("server.tls"));
        assert!(source.has_section("server"));
    }

    #[test]
    fn setting_errors_blame_the_flag_or_the_key() {
        let file = Path::new(FILE);
        let values = resolve(&ours("server:\n  wait: 1s\n").unwrap(), &Flags::default()).unwrap();
        assert_eq!(
            values.wait.error(file, "too short".into()).to_string(),
            format!("server.wait: too short (in {FILE})")
        );
        assert_eq!(
            values.port.error(file, "taken".into()).to_string(),
            format!("server.port: taken (in {FILE})")
        );
        let flags = Flags {
            wait: Some(Duration::from_secs(1)),
            ..Flags::default()
        };
        let values = resolve(&ours("").unwrap(), &flags).unwrap();
        assert_eq!(
            values.wait.error(file, "too short".into()).to_string(),
            "--wait: too short"
        );
    }

    #[test]
    fn named_files_must_be_readable() {
        let dir = tempfile::tempdir().unwrap();
        let present = dir.path().join("ca.crt");
        std::fs::write(&present, "x").unwrap();
        let file = Path::new(FILE);
        let source = ours(&format!(
            "server:\n  tls:\n    caFile: {}\n",
            present.display()
        ))
        .unwrap();
        let values = resolve(&source, &Flags::default()).unwrap();
        values
            .ca
            .clone()
            .present()
            .unwrap()
            .check_readable(file)
            .unwrap();

        let missing = dir.path().join("missing.crt");
        let flags = Flags {
            ca: Some(missing.clone()),
            ..Flags::default()
        };
        let ca = resolve(&source, &flags).unwrap().ca.present().unwrap();
        let message = ca.check_readable(file).unwrap_err().to_string();
        assert!(
            message.starts_with(&format!("--ca: {}: ", missing.display())),
            "{message}"
        );
        let message = Setting {
            value: dir.path().to_owned(),
            origin: Origin::Key("server.tls.caFile".into()),
            key: "server.tls.caFile",
            in_file: true,
        }
        .check_readable(file)
        .unwrap_err()
        .to_string();
        assert!(message.starts_with("server.tls.caFile: "), "{message}");
        assert!(message.contains("is a directory"), "{message}");
        assert!(message.ends_with(&format!("(in {FILE})")), "{message}");
        assert!(
            resolve(&ours("").unwrap(), &Flags::default())
                .unwrap()
                .ca
                .present()
                .is_none()
        );
    }

    #[test]
    fn unknown_field_messages_match_serde() {
        assert_eq!(
            unknown_field("x", &[]),
            "unknown field `x`, there are no fields"
        );
        assert_eq!(
            unknown_field("x", &["a"]),
            "unknown field `x`, expected `a`"
        );
        assert_eq!(
            unknown_field("x", &["a", "b"]),
            "unknown field `x`, expected `a` or `b`"
        );
        assert_eq!(
            unknown_field("x", &["a", "b", "c"]),
            "unknown field `x`, expected one of `a`, `b`, `c`"
        );
        assert_eq!(
            children(&["a.b", "a.c.d", "e", "a.b2"], "a"),
            vec!["b", "c", "b2"]
        );
        assert_eq!(children(&["a.b", "a.c.d", "e"], ""), vec!["a", "e"]);
    }
}
