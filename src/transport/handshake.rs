//! The connection handshake, in this order:
//!
//! 1. `HELLO 3 [AUTH user pass] [SETNAME name]` (one round trip). If the
//!    server refuses `HELLO 3` (`NOPROTO`, or an unknown command on old
//!    servers), fall back to RESP2 with `AUTH` and `CLIENT SETNAME`.
//! 2. `SELECT db`, when a database other than 0 is configured.
//! 3. The maintenance opt-in, `CLIENT MAINT_NOTIFICATIONS ON
//!    moving-endpoint-type T` (the maintenance contract, section 1): RESP3 only. Its place is
//!    marked below; it has its own error rules (mode `Auto` tolerates a
//!    refusal), so it is not one of the user's `on_connect` commands. In
//!    mode `Auto` it is not sent to an endpoint whose server, with the same
//!    `HELLO` name and version, refused it before. The outcome goes to the
//!    endpoint's [`MaintenanceState`](crate::maint::MaintenanceState).
//! 4. The user's `on_connect` commands.
//!
//! Steps 2 to 4 go out as one pipeline: one round trip whatever their number.

use super::connector::Config;
use super::{Connection, ConnectionInfo, Endpoint, MaintSupport, Protocol};
use crate::error::{Error, Result};
use crate::maint::{Maintained, Mode, OptIn};
use crate::resp::{cmd, Pipeline, Value};

pub(crate) async fn run(conn: &Connection, config: &Config) -> Result<ConnectionInfo> {
    let mut info = ConnectionInfo::default();
    let mut resp2 = config.protocol == Protocol::Resp2;
    let mut pipeline = Pipeline::new();
    // Index of the RESP2 `AUTH` in the pipeline: its refusal is an auth error.
    let mut auth_at = None;

    if !resp2 {
        let mut hello = cmd("HELLO").arg(3);
        if let Some(password) = &config.password {
            let user = config.username.as_deref().unwrap_or("default");
            hello = hello.arg("AUTH").arg(user).arg(password);
        }
        if let Some(name) = &config.client_name {
            hello = hello.arg("SETNAME").arg(name);
        }
        match conn.send_cmd(hello).await {
            Ok(reply) => read_hello(&reply, &mut info),
            Err(Error::Server(e)) if e.is_auth_error() => return Err(Error::Auth(e)),
            Err(Error::Server(e)) => {
                tracing::info!(
                    target: "redis_layers::handshake",
                    event = "handshake.resp2_fallback",
                    endpoint = %conn.endpoint(),
                    reason = %e,
                    "server refused HELLO 3; using RESP2"
                );
                resp2 = true;
            }
            Err(e) => return Err(e),
        }
    }

    if resp2 {
        conn.set_protocol(Protocol::Resp2);
        info.protocol = Protocol::Resp2;
        if let Some(password) = &config.password {
            let auth = match &config.username {
                Some(user) => cmd("AUTH").arg(user).arg(password),
                None => cmd("AUTH").arg(password),
            };
            auth_at = Some(pipeline.len());
            pipeline.push(auth);
        }
        if let Some(name) = &config.client_name {
            pipeline.push(cmd("CLIENT").arg("SETNAME").arg(name));
        }
        if config.password.is_none() {
            // Under RESP3 a server that wants a password refuses HELLO; here
            // nothing would ask until the user's first command. PING asks now,
            // so the connect fails with `Error::Auth` either way.
            pipeline.push(cmd("PING"));
        }
    }

    if config.database != 0 {
        pipeline.push(cmd("SELECT").arg(config.database));
    }

    // Step 3, the maintenance opt-in (RESP3 connections only: notifications
    // are push frames).
    let mode = config.maint.mode();
    let state = conn.maintenance();
    let mut maint_at = None;
    if resp2 && mode.requires_support() {
        state.set_opt_in(OptIn::Resp2, None);
        return Err(Error::config(format!(
            "maintenance notifications are Enabled, but {} refused HELLO 3 and they need RESP3",
            conn.endpoint()
        )));
    }
    if mode == Mode::Disabled {
        state.set_opt_in(OptIn::DisabledByConfig, None);
    } else if resp2 {
        state.set_opt_in(OptIn::Resp2, None);
    } else if let Some(error) = (mode == Mode::Auto)
        .then(|| state.refused_by(info.server.as_deref(), info.version.as_deref()))
        .flatten()
    {
        // Asked before, and this server (same name and version) said no:
        // not again (see `Mode::Auto`).
        tracing::debug!(
            target: "redis_layers::handshake",
            event = "handshake.maint_skipped",
            endpoint = %conn.endpoint(),
            reason = %error,
            "maintenance opt-in refused before by this server; not asking again"
        );
        info.maintenance = MaintSupport::Unsupported(error);
    } else {
        let host = match conn.endpoint() {
            Endpoint::Tcp { host, .. } => host.as_str(),
            // A local socket: the server is on this machine.
            Endpoint::Unix(_) => "127.0.0.1",
        };
        if let Some(t) = config
            .maint
            .endpoint_type_for(host, config.tls_on(conn.endpoint()))
            .await
        {
            maint_at = Some((pipeline.len(), t));
            pipeline.push(
                cmd("CLIENT")
                    .arg("MAINT_NOTIFICATIONS")
                    .arg("ON")
                    .arg("moving-endpoint-type")
                    .arg(t.as_str()),
            );
        }
    }

    for c in &config.on_connect {
        pipeline.push(c.clone());
    }
    if pipeline.is_empty() {
        return Ok(info);
    }
    let results = conn.send(pipeline).await?.into_pipeline()?;
    for (i, r) in results.into_iter().enumerate() {
        if let Some((_, t)) = maint_at.filter(|(at, _)| *at == i) {
            let refused = |e: &crate::error::ServerError| OptIn::Refused {
                error: String::from_utf8_lossy(e.as_bytes()).into_owned(),
                server: info.server.clone(),
                version: info.version.clone(),
            };
            info.maintenance = match r {
                Ok(_) => {
                    state.set_opt_in(OptIn::Enabled { endpoint_type: t }, Some(t));
                    MaintSupport::Enabled(t)
                }
                Err(e) if mode == Mode::Auto => {
                    state.set_opt_in(refused(&e), Some(t));
                    // Expected on servers without the feature: quiet.
                    tracing::debug!(
                        target: "redis_layers::handshake",
                        event = "handshake.maint_unsupported",
                        endpoint = %conn.endpoint(),
                        reason = %e,
                        "server does not send maintenance notifications; carrying on without"
                    );
                    MaintSupport::Unsupported(String::from_utf8_lossy(e.as_bytes()).into_owned())
                }
                Err(e) => {
                    state.set_opt_in(refused(&e), Some(t));
                    return Err(Error::config(format!(
                        "maintenance notifications are Enabled, but {} refused \
                         CLIENT MAINT_NOTIFICATIONS ON moving-endpoint-type {t}: {e}",
                        conn.endpoint()
                    )));
                }
            };
            continue;
        }
        if let Err(e) = r {
            if auth_at == Some(i) || e.is_auth_error() {
                return Err(Error::Auth(e));
            }
            return Err(Error::Server(e));
        }
    }
    Ok(info)
}

fn read_hello(reply: &Value, info: &mut ConnectionInfo) {
    let pairs: Vec<(&Value, &Value)> = match reply {
        Value::Map(m) => m.iter().map(|(k, v)| (k, v)).collect(),
        // A RESP2-style flat array of key, value, ...
        Value::Array(a) => a.chunks_exact(2).map(|p| (&p[0], &p[1])).collect(),
        _ => return,
    };
    let text = |v: &Value| {
        v.as_bytes()
            .map(|b| String::from_utf8_lossy(b).into_owned())
    };
    for (k, v) in pairs {
        match k.as_bytes() {
            Some(b"server") => info.server = text(v),
            Some(b"version") => info.version = text(v),
            Some(b"id") => info.client_id = v.as_int(),
            Some(b"mode") => info.mode = text(v),
            Some(b"role") => info.role = text(v),
            _ => {}
        }
    }
}
