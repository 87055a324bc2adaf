//! Derivations (`.drv` files) as far as registering one needs: the output paths it declares.
//! Their bytes arrive from the operator, so they are parsed like any untrusted input.

use super::path::StorePath;

/// The outputs a derivation (`.drv`, ATerm) declares with a fixed path:
/// `Derive([("out","/nix/store/…","",""),…`. Floating content-addressed outputs (an empty path)
/// have no path yet and are left out, as Nix does. `None` when the text is not a derivation, or
/// an output's path is not a valid store path.
pub fn derivation_outputs(drv: &[u8]) -> Option<Vec<(String, StorePath)>> {
    let mut rest = drv.strip_prefix(b"Derive([")?;
    let mut outputs = Vec::new();
    loop {
        if let Some(after) = rest.strip_prefix(b"]") {
            let _ = after;
            return Some(outputs);
        }
        if !outputs.is_empty() {
            rest = rest.strip_prefix(b",")?;
        }
        rest = rest.strip_prefix(b"(")?;
        let mut fields = Vec::with_capacity(4);
        for i in 0..4 {
            if i > 0 {
                rest = rest.strip_prefix(b",")?;
            }
            let (field, after) = aterm_string(rest)?;
            fields.push(field);
            rest = after;
        }
        rest = rest.strip_prefix(b")")?;
        let mut fields = fields.into_iter();
        let (id, path) = (fields.next()?, fields.next()?);
        if id.is_empty() {
            return None;
        }
        if !path.is_empty() {
            outputs.push((id, StorePath::parse(&path).ok()?));
        }
    }
}

/// One ATerm string literal with its escapes, and what follows it.
fn aterm_string(input: &[u8]) -> Option<(String, &[u8])> {
    let mut rest = input.strip_prefix(b"\"")?;
    let mut out = Vec::new();
    loop {
        match rest {
            [b'"', after @ ..] => return Some((String::from_utf8(out).ok()?, after)),
            [b'\\', c, after @ ..] => {
                out.push(match c {
                    b'n' => b'\n',
                    b'r' => b'\r',
                    b't' => b'\t',
                    other => *other,
                });
                rest = after;
            }
            [c, after @ ..] => {
                out.push(*c);
                rest = after;
            }
            [] => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-x-dev";
    const B: &str = "/nix/store/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-x";

    #[test]
    fn reads_derivation_outputs() {
        let drv = format!(
            r#"Derive([("dev","{A}","",""),("out","{B}","","")],[],[],"x86_64-linux","/bin/sh",[],[])"#
        );
        let outputs = derivation_outputs(drv.as_bytes()).unwrap();
        assert_eq!(
            outputs,
            [
                ("dev".to_owned(), StorePath::parse(A).unwrap()),
                ("out".to_owned(), StorePath::parse(B).unwrap())
            ]
        );
        assert!(derivation_outputs(b"Derive([(\"out\"").is_none());
        assert!(derivation_outputs(b"not a drv").is_none());
    }

    #[test]
    fn floating_outputs_have_no_path_yet() {
        let drv = br#"Derive([("out","","r:sha256","")],[],[],"x86_64-linux","/bin/sh",[],[])"#;
        assert_eq!(derivation_outputs(drv).unwrap(), []);
    }

    #[test]
    fn an_output_path_outside_the_store_is_refused() {
        for path in [
            "/etc/passwd",
            "/nix/store/../../etc/passwd",
            "relative",
            "/nix/store/short-x",
        ] {
            let drv = format!(r#"Derive([("out","{path}","","")],[],[],"x","/bin/sh",[],[])"#);
            assert!(derivation_outputs(drv.as_bytes()).is_none(), "{path}");
        }
        let no_id = format!(r#"Derive([("","{B}","","")],[],[],"x","/bin/sh",[],[])"#);
        assert!(derivation_outputs(no_id.as_bytes()).is_none());
    }
}
