//! A small Spin-compatible host, so CI can run tokenedge's Spin component
//! end to end on a machine where the Spin CLI cannot be installed.
//!
//! It is built the way spin-sdk's own tests host components, on the
//! wasmtime release Spin 4.0.2 is built on (44), and serves requests the way
//! Spin 4.0.2's HTTP trigger does for a `wasi:http/handler@0.3` component:
//! `wasmtime_wasi_http::handler::ProxyHandler` with Spin's default instance
//! reuse (up to 128 requests per instance, 16 at once, 1 s idle), the
//! response body handed to hyper while the store keeps running until hyper
//! has read it, and a `spin-client-addr` header.
//!
//! From `spin.toml` it reads the application `[variables]` (defaults, and
//! `SPIN_VARIABLE_<NAME>` environment overrides, as `spin up` does), the
//! component's `variables`, `allowed_outbound_hosts` (templates resolved;
//! requests elsewhere are denied) and `key_value_stores`.
//!
//! It implements `spin:key-value/key-value@3.0.0` (in memory, shared by all
//! instances, `get-keys` not implemented; with `SPIN_HOST_KV_DUMP=FILE` it
//! writes the store's keys to FILE after every change and appends each
//! written key to FILE.writes, for tests) and
//! `spin:variables/variables@3.0.0`,
//! plus WASI 0.2 and 0.3 (`wasmtime-wasi`) and outbound `wasi:http@0.3`
//! (`wasmtime-wasi-http`). Real Spin adds on top: routing between several
//! components, SQLite-backed and runtime-configured key-value stores, the
//! other Spin interfaces (SQLite, Redis, Postgres, MQTT, LLM), TLS, h2c,
//! request timeouts, OpenTelemetry, and subdomain wildcards in
//! `allowed_outbound_hosts`.
//!
//! ```text
//! tokenedge-spin-host --manifest spin.toml [--component path.wasm] [--listen 127.0.0.1:3000]
//! tokenedge-spin-host --manifest spin.toml --imports   # list what the component imports
//! ```

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::BodyExt;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use wasmtime::component::{
    Accessor, Component, FutureReader, HasData, Linker, Resource, ResourceTable, StreamReader,
};
use wasmtime::error::Context as _;
use wasmtime::{bail, format_err, Result};
use wasmtime::{Config, Engine, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::handler::{HandlerState, Proxy, ProxyHandler, ProxyPre, StoreBundle};
use wasmtime_wasi_http::p3::bindings::http::types::ErrorCode;
use wasmtime_wasi_http::p3::{RequestOptions, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};
use wasmtime_wasi_http::WasiHttpCtx;

wasmtime::component::bindgen!({
    path: "wit",
    world: "host",
    imports: { default: async | trappable },
    trappable_error_type: {
        "spin:key-value/key-value@3.0.0.error" => spin::key_value::key_value::Error,
        "spin:variables/variables@3.0.0.error" => spin::variables::variables::Error,
    },
});

use spin::key_value::key_value as kv;
use spin::variables::variables as var;

/// Spin 4.0.2's defaults for `wasi:http@0.3` components.
const MAX_INSTANCE_REUSE: usize = 128;
const MAX_INSTANCE_CONCURRENT_REUSE: usize = 16;
const IDLE_INSTANCE_TIMEOUT: Duration = Duration::from_secs(1);

/// What the manifest and environment decide, shared by every instance.
struct App {
    /// Component variables, resolved.
    variables: HashMap<String, String>,
    key_value_stores: Vec<String>,
    allowed_hosts: Vec<AllowedHost>,
    /// The one in-memory store behind every allowed label.
    kv: Mutex<HashMap<String, Vec<u8>>>,
    /// `SPIN_HOST_KV_DUMP`: a file that lists the store's keys after every
    /// change (what tests read to see the store grow and shrink); every
    /// write's key is appended to the same path + `.writes`.
    kv_dump: Option<PathBuf>,
}

impl App {
    /// Writes the store's keys, one per line, to `kv_dump` if set.
    fn dump_keys(&self, kv: &HashMap<String, Vec<u8>>) {
        if let Some(path) = &self.kv_dump {
            let mut keys: Vec<&str> = kv.keys().map(String::as_str).collect();
            keys.sort_unstable();
            let _ = std::fs::write(path, keys.join("\n"));
        }
    }

    /// Appends a written key to `kv_dump` + `.writes` if set.
    fn log_write(&self, key: &str) {
        if let Some(path) = &self.kv_dump {
            let mut log = path.clone().into_os_string();
            log.push(".writes");
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log);
            if let Ok(mut f) = file {
                let _ = std::io::Write::write_all(&mut f, format!("{key}\n").as_bytes());
            }
        }
    }
}

/// One `allowed_outbound_hosts` entry: `scheme://host[:port]`, each part
/// possibly `*`.
#[derive(Debug)]
struct AllowedHost {
    scheme: String,
    host: String,
    port: String,
}

impl AllowedHost {
    fn parse(entry: &str) -> Result<Self> {
        let (scheme, rest) = entry
            .split_once("://")
            .with_context(|| format!("allowed_outbound_hosts entry {entry:?} has no scheme"))?;
        let rest = rest.trim_end_matches('/');
        if rest.contains('/') {
            bail!("allowed_outbound_hosts entry {entry:?} must not include a path");
        }
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) => (h.to_owned(), p.to_owned()),
            None => (
                rest.to_owned(),
                default_port(scheme).unwrap_or("*").to_owned(),
            ),
        };
        Ok(Self {
            scheme: scheme.to_owned(),
            host,
            port,
        })
    }

    fn allows(&self, uri: &http::Uri) -> bool {
        let scheme = uri.scheme_str().unwrap_or("https");
        let host = uri.host().unwrap_or("");
        let port = uri
            .port_u16()
            .map(|p| p.to_string())
            .or_else(|| default_port(scheme).map(str::to_owned))
            .unwrap_or_default();
        let part =
            |pattern: &str, value: &str| pattern == "*" || pattern.eq_ignore_ascii_case(value);
        part(&self.scheme, scheme) && part(&self.host, host) && part(&self.port, &port)
    }
}

fn default_port(scheme: &str) -> Option<&'static str> {
    match scheme {
        "http" => Some("80"),
        "https" => Some("443"),
        _ => None,
    }
}

/// Replaces each `{{ name }}` with the application variable's value.
fn resolve(template: &str, vars: &HashMap<String, String>) -> Result<String> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let end = rest[start..]
            .find("}}")
            .with_context(|| format!("unclosed template in {template:?}"))?;
        let name = rest[start + 2..start + end].trim();
        let value = vars
            .get(name)
            .with_context(|| format!("{template:?} uses undefined variable {name:?}"))?;
        out.push_str(value);
        rest = &rest[start + end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Reads `spin.toml`; returns the app and the component's `source` path.
fn load_manifest(path: &Path) -> Result<(App, PathBuf)> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {path:?}"))?;
    let doc = text
        .parse::<toml::Table>()
        .with_context(|| format!("parsing {path:?}"))?;
    if doc
        .get("spin_manifest_version")
        .and_then(|v| v.as_integer())
        != Some(2)
    {
        bail!("{path:?}: only spin_manifest_version = 2 is supported");
    }
    let mut app_vars = HashMap::new();
    let empty = toml::Table::new();
    let declared = doc
        .get("variables")
        .and_then(|v| v.as_table())
        .unwrap_or(&empty);
    for (name, def) in declared {
        let env = format!("SPIN_VARIABLE_{}", name.to_ascii_uppercase());
        let value = match std::env::var(&env) {
            Ok(v) => v,
            Err(_) => match def.get("default").and_then(|d| d.as_str()) {
                Some(d) => d.to_owned(),
                None => bail!("variable {name:?} is required: set {env}"),
            },
        };
        app_vars.insert(name.clone(), value);
    }
    let components = doc
        .get("component")
        .and_then(|c| c.as_table())
        .context("no [component] in the manifest")?;
    let [(id, component)] = components.iter().collect::<Vec<_>>()[..] else {
        bail!("this host serves exactly one component");
    };
    let strings = |key: &str| -> Vec<String> {
        component
            .get(key)
            .and_then(|v| v.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut variables = HashMap::new();
    if let Some(table) = component.get("variables").and_then(|v| v.as_table()) {
        for (name, template) in table {
            let template = template
                .as_str()
                .with_context(|| format!("component variable {name:?} is not a string"))?;
            variables.insert(name.clone(), resolve(template, &app_vars)?);
        }
    }
    let allowed_hosts = strings("allowed_outbound_hosts")
        .iter()
        .map(|h| AllowedHost::parse(&resolve(h, &app_vars)?))
        .collect::<Result<_>>()?;
    let source = component
        .get("source")
        .and_then(|s| s.as_str())
        .with_context(|| format!("component {id:?} has no string `source`"))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    Ok((
        App {
            variables,
            key_value_stores: strings("key_value_stores"),
            allowed_hosts,
            kv: Mutex::new(HashMap::new()),
            kv_dump: std::env::var_os("SPIN_HOST_KV_DUMP").map(PathBuf::from),
        },
        dir.join(source),
    ))
}

/// Per-instance state.
struct Ctx {
    table: ResourceTable,
    wasi: WasiCtx,
    http: WasiHttpCtx,
    hooks: Hooks,
    app: Arc<App>,
}

impl WasiView for Ctx {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for Ctx {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            hooks: &mut self.hooks,
            table: &mut self.table,
            ctx: &mut self.http,
        }
    }
}

/// Outbound HTTP: the default client, limited to `allowed_outbound_hosts`.
struct Hooks {
    app: Arc<App>,
}

type SendResult = Result<
    (
        http::Response<UnsyncBoxBody<Bytes, ErrorCode>>,
        Box<dyn Future<Output = Result<(), ErrorCode>> + Send>,
    ),
    wasmtime_wasi::TrappableError<ErrorCode>,
>;

impl WasiHttpHooks for Hooks {
    fn send_request(
        &mut self,
        request: http::Request<UnsyncBoxBody<Bytes, ErrorCode>>,
        options: Option<RequestOptions>,
        fut: Box<dyn Future<Output = Result<(), ErrorCode>> + Send>,
    ) -> Box<dyn Future<Output = SendResult> + Send> {
        drop(fut);
        if !self
            .app
            .allowed_hosts
            .iter()
            .any(|h| h.allows(request.uri()))
        {
            eprintln!(
                "spin-host: outbound request to {} denied by allowed_outbound_hosts",
                request.uri()
            );
            return Box::new(async { Err(ErrorCode::HttpRequestDenied.into()) });
        }
        Box::new(async move {
            let (res, io) = wasmtime_wasi_http::p3::default_send_request(request, options).await?;
            Ok((
                res.map(BodyExt::boxed_unsync),
                Box::new(io) as Box<dyn Future<Output = _> + Send>,
            ))
        })
    }
}

/// Binds the Spin interfaces to [`Ctx`].
struct SpinData;

impl HasData for SpinData {
    type Data<'a> = &'a mut Ctx;
}

impl kv::Host for Ctx {
    fn convert_error(&mut self, err: kv::Error) -> wasmtime::Result<kv::Error> {
        Ok(err)
    }
}

impl kv::HostStore for Ctx {
    async fn drop(&mut self, _store: Resource<kv::Store>) -> wasmtime::Result<()> {
        Ok(())
    }
}

fn app<T>(accessor: &Accessor<T, SpinData>) -> Arc<App> {
    accessor.with(|mut access| access.get().app.clone())
}

impl kv::HostStoreWithStore for SpinData {
    async fn open<T>(
        accessor: &Accessor<T, Self>,
        label: String,
    ) -> Result<Resource<kv::Store>, kv::Error> {
        if app(accessor).key_value_stores.contains(&label) {
            // One store behind every label: the handle carries nothing.
            Ok(Resource::new_own(0))
        } else {
            Err(kv::Error::AccessDenied)
        }
    }

    async fn get<T>(
        accessor: &Accessor<T, Self>,
        _store: Resource<kv::Store>,
        key: String,
    ) -> Result<Option<Vec<u8>>, kv::Error> {
        Ok(app(accessor).kv.lock().unwrap().get(&key).cloned())
    }

    async fn set<T>(
        accessor: &Accessor<T, Self>,
        _store: Resource<kv::Store>,
        key: String,
        value: Vec<u8>,
    ) -> Result<(), kv::Error> {
        let app = app(accessor);
        let mut kv = app.kv.lock().unwrap();
        app.log_write(&key);
        kv.insert(key, value);
        app.dump_keys(&kv);
        Ok(())
    }

    async fn delete<T>(
        accessor: &Accessor<T, Self>,
        _store: Resource<kv::Store>,
        key: String,
    ) -> Result<(), kv::Error> {
        let app = app(accessor);
        let mut kv = app.kv.lock().unwrap();
        kv.remove(&key);
        app.dump_keys(&kv);
        Ok(())
    }

    async fn exists<T>(
        accessor: &Accessor<T, Self>,
        _store: Resource<kv::Store>,
        key: String,
    ) -> Result<bool, kv::Error> {
        Ok(app(accessor).kv.lock().unwrap().contains_key(&key))
    }

    async fn get_keys<T>(
        _accessor: &Accessor<T, Self>,
        _store: Resource<kv::Store>,
    ) -> wasmtime::Result<(StreamReader<String>, FutureReader<Result<(), kv::Error>>)> {
        bail!("spin-host: key-value get-keys is not implemented")
    }
}

impl var::Host for Ctx {
    fn convert_error(&mut self, err: var::Error) -> wasmtime::Result<var::Error> {
        Ok(err)
    }
}

impl var::HostWithStore for SpinData {
    async fn get<T>(accessor: &Accessor<T, Self>, key: String) -> Result<String, var::Error> {
        app(accessor)
            .variables
            .get(&key)
            .cloned()
            .ok_or(var::Error::Undefined(format!("no variable for {key:?}")))
    }
}

/// How instances are made and reused (Spin 4.0.2's defaults).
struct State {
    engine: Engine,
    app: Arc<App>,
}

impl HandlerState for State {
    type StoreData = Ctx;

    fn new_store(&self, _req_id: Option<u64>) -> wasmtime::Result<StoreBundle<Ctx>> {
        let app = self.app.clone();
        let ctx = Ctx {
            table: ResourceTable::new(),
            wasi: WasiCtxBuilder::new()
                .inherit_stdout()
                .inherit_stderr()
                .build(),
            http: WasiHttpCtx::new(),
            hooks: Hooks { app: app.clone() },
            app,
        };
        Ok(StoreBundle {
            store: Store::new(&self.engine, ctx),
            write_profile: Box::new(|_| ()),
        })
    }

    fn request_timeout(&self) -> Duration {
        Duration::MAX
    }

    fn idle_instance_timeout(&self) -> Duration {
        IDLE_INSTANCE_TIMEOUT
    }

    fn max_instance_reuse_count(&self) -> usize {
        MAX_INSTANCE_REUSE
    }

    fn max_instance_concurrent_reuse_count(&self) -> usize {
        MAX_INSTANCE_CONCURRENT_REUSE
    }

    fn handle_worker_error(&self, error: wasmtime::Error) {
        eprintln!("spin-host: instance error: {error:?}");
    }
}

/// Tells the store's event loop when hyper has finished with the body.
struct NotifyOnDrop<B> {
    body: B,
    _done: oneshot::Sender<()>,
}

impl<B: http_body::Body + Unpin> http_body::Body for NotifyOnDrop<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

type HostBody = UnsyncBoxBody<Bytes, wasmtime::Error>;

async fn serve(
    handler: ProxyHandler<State>,
    req: hyper::Request<hyper::body::Incoming>,
    client: SocketAddr,
) -> Result<http::Response<HostBody>> {
    let (mut parts, body) = req.into_parts();
    let authority = parts
        .headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost")
        .to_owned();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let full_url = format!("http://{authority}{path}");
    parts.uri = full_url.parse()?;
    parts
        .headers
        .insert("spin-client-addr", client.to_string().parse()?);
    parts.headers.insert("spin-full-url", full_url.parse()?);
    let body = body.map_err(ErrorCode::from_hyper_request_error);
    let (request, request_io) =
        wasmtime_wasi_http::p3::Request::from_http(http::Request::from_parts(parts, body));

    let (tx, rx) = oneshot::channel();
    handler.spawn(
        None,
        Box::new(move |store: &Accessor<Ctx>, proxy: &Proxy| {
            Box::pin(async move {
                let Proxy::P3(service) = proxy else {
                    unreachable!("only wasi:http@0.3 components are served")
                };
                let response = async {
                    let response = match service.handle(store, request).await? {
                        Ok(response) => response,
                        Err(e) => bail!("the component returned {e:?}"),
                    };
                    store.with(|mut s| response.into_http(&mut s, request_io))
                }
                .await;
                match response {
                    Ok(response) => {
                        let (done_tx, done_rx) = oneshot::channel();
                        let response = response.map(|body| {
                            NotifyOnDrop {
                                body: body.map_err(|e| format_err!("{e:?}")),
                                _done: done_tx,
                            }
                            .boxed_unsync()
                        });
                        // The store must keep running until hyper has read
                        // the body, or the component cannot finish writing it.
                        if tx.send(Ok(response)).is_ok() {
                            let _ = done_rx.await;
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(format_err!("{e:?}")));
                    }
                }
            })
        }),
    );
    match rx.await? {
        Ok(response) => Ok(response),
        Err(e) => {
            eprintln!("spin-host: {e}");
            let body = http_body_util::Full::new(Bytes::from_static(b"component error\n"))
                .map_err(|never| match never {})
                .boxed_unsync();
            Ok(http::Response::builder().status(500).body(body)?)
        }
    }
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let manifest = PathBuf::from(arg(&args, "--manifest").unwrap_or_else(|| "spin.toml".into()));
    let listen: SocketAddr = arg(&args, "--listen")
        .unwrap_or_else(|| "127.0.0.1:3000".into())
        .parse()?;
    let (app, source) = load_manifest(&manifest)?;
    let source = arg(&args, "--component")
        .map(PathBuf::from)
        .unwrap_or(source);
    let app = Arc::new(app);

    let mut config = Config::new();
    config.wasm_component_model_async(true);
    // `--perfmap`: names the component's compiled functions for `perf`
    // (in /tmp/perf-PID.map), to see where the host's time goes.
    if args.iter().any(|a| a == "--perfmap") {
        config.profiler(wasmtime::ProfilingStrategy::PerfMap);
    }
    let engine = Engine::new(&config)?;
    let component = Component::from_file(&engine, &source)
        .map_err(|e| format_err!("loading {source:?}: {e:?}"))?;
    if args.iter().any(|a| a == "--imports") {
        use wasmtime::component::types::ComponentItem;
        for (name, item) in component.component_type().imports(&engine) {
            if let ComponentItem::ComponentInstance(inst) = item {
                for (f, item) in inst.exports(&engine) {
                    if let ComponentItem::ComponentFunc(func) = item {
                        println!("{name} {f} async={}", func.async_());
                    }
                }
            }
        }
        return Ok(());
    }
    let mut linker = Linker::<Ctx>::new(&engine);
    // WASI 0.3 and wasi:http 0.3 both define the (function-less)
    // `wasi:clocks/types` instance.
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    wasmtime_wasi::p3::add_to_linker(&mut linker)?;
    linker.allow_shadowing(true);
    wasmtime_wasi_http::p3::add_to_linker(&mut linker)?;
    linker.allow_shadowing(false);
    kv::add_to_linker::<_, SpinData>(&mut linker, |c| c)?;
    var::add_to_linker::<_, SpinData>(&mut linker, |c| c)?;
    let pre =
        wasmtime_wasi_http::p3::bindings::ServicePre::new(linker.instantiate_pre(&component)?)
            .map_err(|e| {
                format_err!("the component does not export wasi:http/handler@0.3: {e:?}")
            })?;
    let handler = ProxyHandler::new(
        State {
            engine: engine.clone(),
            app,
        },
        ProxyPre::P3(pre),
    );

    let listener = TcpListener::bind(listen).await?;
    println!("spin-host: serving {source:?} on http://{listen}");
    loop {
        let (stream, client) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| serve(handler.clone(), req, client));
            if let Err(e) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                if !e.is_incomplete_message() {
                    eprintln!("spin-host: connection from {client}: {e}");
                }
            }
        });
    }
}
