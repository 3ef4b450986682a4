//! What a shared connection refuses: commands that change the connection's
//! state for every caller on it. The rules are documented in the transport
//! module ("Shared connections").

use crate::error::{Error, Result};
use crate::resp::Cmd;

/// Refuses a request (its commands, in order) that would change a shared
/// connection's state.
pub(crate) fn check_shared(cmds: &[Cmd]) -> Result<()> {
    let last = cmds.len().saturating_sub(1);
    // Inside a `MULTI` of this request: it must close in the request too.
    let mut open = false;
    for (i, c) in cmds.iter().enumerate() {
        if c.is("MULTI") && !open {
            open = true;
            continue;
        }
        if (c.is("EXEC") || c.is("DISCARD")) && open {
            open = false;
            continue;
        }
        // Applies to the next command only: harmless when it follows here.
        if (c.is("ASKING") || is_client(c, b"CACHING")) && i < last {
            continue;
        }
        if let Some(instead) = refusal(c) {
            return Err(refused(c, instead));
        }
    }
    if open {
        return Err(refused(
            &cmds[0],
            refusal(&crate::cmd("MULTI")).unwrap_or_default(),
        ));
    }
    Ok(())
}

fn refused(c: &Cmd, instead: &str) -> Error {
    let name = String::from_utf8_lossy(c.name().unwrap_or_default()).to_ascii_uppercase();
    Error::usage(format!(
        "{name} would change the shared connection for every caller on it; {instead}"
    ))
}

fn is_client(c: &Cmd, sub: &[u8]) -> bool {
    c.is("CLIENT") && c.argv().nth(1).is_some_and(|s| s.eq_ignore_ascii_case(sub))
}

/// What to use instead of `c`, when `c` changes the connection's state.
fn refusal(c: &Cmd) -> Option<&'static str> {
    const TRANSACTION: &str =
        "send MULTI ... EXEC as one request (Client::transaction) or use a dedicated connection";
    const DEDICATED: &str = "use a dedicated connection (Client::watch, Handoff::lease)";
    const ON_CONNECT: &str =
        "configure it with Connector::on_connect, which replays it on every new connection";
    let name = c.name()?;
    let is = |n: &str| name.eq_ignore_ascii_case(n.as_bytes());
    if is("MULTI") || is("EXEC") || is("DISCARD") {
        return Some(TRANSACTION);
    }
    if is("WATCH") || is("UNWATCH") {
        return Some("use Client::watch, which runs on a dedicated connection");
    }
    if is("SELECT") {
        return Some("set the database with Connector::database (or a redis://host/db URL)");
    }
    if is("HELLO") || is("AUTH") {
        return Some("set credentials and protocol with Connector::password/username/protocol");
    }
    if is("READONLY") || is("READWRITE") {
        return Some(ON_CONNECT);
    }
    if is("ASKING") {
        return Some("send it in one request with the command it applies to");
    }
    if is("RESET") || is("QUIT") || is("SYNC") || is("PSYNC") {
        return Some(DEDICATED);
    }
    if is("CLIENT") {
        let sub = c.argv().nth(1).unwrap_or_default();
        let sub_is = |n: &str| sub.eq_ignore_ascii_case(n.as_bytes());
        if sub_is("SETNAME") {
            return Some("set the name with Connector::client_name");
        }
        if sub_is("TRACKING") {
            return Some(
                "configure it with Connector::tracking, which replays it on every new connection",
            );
        }
        if sub_is("NO-EVICT") || sub_is("NO-TOUCH") {
            return Some(ON_CONNECT);
        }
        if sub_is("MAINT_NOTIFICATIONS") {
            return Some("configure it with MaintenanceConfig (Connector::maintenance)");
        }
        if sub_is("CACHING") {
            return Some("send it in one request with the command it applies to");
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd;

    fn ok(cmds: &[Cmd]) -> bool {
        check_shared(cmds).is_ok()
    }

    #[test]
    fn single_state_commands_are_refused() {
        for c in [
            cmd("MULTI"),
            cmd("exec"),
            cmd("DISCARD"),
            cmd("WATCH").arg("k"),
            cmd("UNWATCH"),
            cmd("SELECT").arg(5),
            cmd("HELLO").arg(3),
            cmd("AUTH").arg("pw"),
            cmd("CLIENT").arg("TRACKING").arg("ON"),
            cmd("client").arg("setname").arg("x"),
            cmd("READONLY"),
            cmd("READWRITE"),
            cmd("RESET"),
            cmd("QUIT"),
            cmd("ASKING"),
            cmd("CLIENT").arg("CACHING").arg("yes"),
        ] {
            let err = check_shared(std::slice::from_ref(&c)).unwrap_err();
            assert!(matches!(err, Error::Usage(_)), "{c:?}: {err}");
        }
        for c in [
            cmd("GET").arg("k"),
            cmd("CLIENT").arg("ID"),
            cmd("CLIENT").arg("REPLY").arg("ON"),
            cmd("SUBSCRIBE").arg("ch"),
        ] {
            assert!(ok(std::slice::from_ref(&c)), "{c:?}");
        }
    }

    #[test]
    fn a_whole_transaction_and_prefixes_are_allowed() {
        let set = || cmd("SET").arg("k").arg(1);
        assert!(ok(&[cmd("MULTI"), set(), cmd("EXEC")]));
        assert!(ok(&[cmd("MULTI"), set(), cmd("DISCARD")]));
        assert!(ok(&[cmd("ASKING"), cmd("GET").arg("k")]));
        assert!(ok(&[
            cmd("CLIENT").arg("CACHING").arg("yes"),
            cmd("GET").arg("k")
        ]));
        // Open or unbalanced transactions, and state inside one.
        assert!(!ok(&[cmd("MULTI"), set()]));
        assert!(!ok(&[set(), cmd("EXEC")]));
        assert!(!ok(&[cmd("MULTI"), cmd("SELECT").arg(2), cmd("EXEC")]));
        assert!(!ok(&[cmd("MULTI"), cmd("MULTI"), cmd("EXEC")]));
        assert!(ok(&[
            cmd("MULTI"),
            set(),
            cmd("EXEC"),
            cmd("ECHO").arg("after")
        ]));
        assert!(ok(&[
            cmd("MULTI"),
            set(),
            cmd("EXEC"),
            cmd("MULTI"),
            cmd("EXEC")
        ]));
        assert!(!ok(&[cmd("MULTI"), set(), cmd("EXEC"), cmd("MULTI")]));
        assert!(!ok(&[cmd("GET").arg("k"), cmd("ASKING")]));
    }
}
