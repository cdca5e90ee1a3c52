// The Functions pages: the account's functions with their last hour, and one function's
// settings, code, versions, aliases, URL and concurrency, with a form to invoke it.
import { useState } from 'preact/hooks';
import { call, json, listFunctions } from './api.js';
import { ErrorBox, fmtBytes, fmtTime, href, usePoll } from './util.jsx';

const COLUMNS = [
  ['FunctionName', 'Name'],
  ['Runtime', 'Runtime'],
  ['MemorySize', 'Memory (MB)'],
  ['LastModified', 'Last modified'],
  ['Invocations', 'Invocations (1 h)'],
  ['Errors', 'Errors (1 h)'],
];

export function FunctionsPage() {
  const [filter, setFilter] = useState('');
  const [sort, setSort] = useState(['FunctionName', 1]);
  const { data, error } = usePoll(async () => {
    const [functions, activity] = await Promise.all([listFunctions(), json('GET', ['ember', 'v1', 'console', 'activity'])]);
    const counts = new Map(activity.Functions.map((a) => [a.FunctionName, a]));
    return functions.map((f) => ({
      ...f,
      Invocations: counts.get(f.FunctionName)?.Invocations ?? 0,
      Errors: counts.get(f.FunctionName)?.Errors ?? 0,
    }));
  }, 10000);
  const [key, dir] = sort;
  const rows = (data || [])
    .filter((f) => f.FunctionName.toLowerCase().includes(filter.toLowerCase()) || (f.Runtime || '').includes(filter))
    .sort((a, b) => (a[key] < b[key] ? -dir : a[key] > b[key] ? dir : 0));
  return (
    <section>
      <h2>Functions</h2>
      <div class="toolbar">
        <input type="search" placeholder="Search by name or runtime" value={filter} onInput={(e) => setFilter(e.currentTarget.value)} id="search" />
        <span class="muted">{data ? `${rows.length} of ${data.length}` : 'loading…'}</span>
      </div>
      <ErrorBox error={error} />
      <table id="functions">
        <thead>
          <tr>
            {COLUMNS.map(([k, label]) => (
              <th key={k} class="sortable" onClick={() => setSort([k, k === key ? -dir : 1])}>
                {label}
                {k === key ? (dir > 0 ? ' ▲' : ' ▼') : ''}
              </th>
            ))}
          </tr>
        </thead>
        <tbody>
          {rows.map((f) => (
            <tr key={f.FunctionName}>
              <td>
                <a href={href('function', f.FunctionName)}>{f.FunctionName}</a>
              </td>
              <td>{f.Runtime || f.PackageType}</td>
              <td class="num">{f.MemorySize}</td>
              <td>{fmtTime(f.LastModified)}</td>
              <td class="num">{f.Invocations}</td>
              <td class={'num' + (f.Errors ? ' bad' : '')}>{f.Errors}</td>
            </tr>
          ))}
        </tbody>
      </table>
      {data && !data.length ? <p class="muted">No functions yet: create one with the AWS CLI, boto3 or `ember fn create`.</p> : null}
    </section>
  );
}

function Field({ label, children }) {
  return (
    <>
      <dt>{label}</dt>
      <dd>{children ?? '—'}</dd>
    </>
  );
}

export function FunctionPage({ name }) {
  const fn = ['2015-03-31', 'functions', name];
  const { data, error } = usePoll(async () => {
    const [get, versions, aliases, urls, provisioned] = await Promise.all([
      json('GET', fn),
      json('GET', [...fn, 'versions']),
      json('GET', [...fn, 'aliases']),
      json('GET', ['2021-10-31', 'functions', name, 'urls']),
      json('GET', ['2019-09-30', 'functions', name, 'provisioned-concurrency'], { query: { List: 'ALL' } }),
    ]);
    return {
      get,
      versions: versions.Versions,
      aliases: aliases.Aliases,
      urls: urls.FunctionUrlConfigs,
      provisioned: provisioned.ProvisionedConcurrencyConfigs,
    };
  }, 0, [name]);
  if (error && !data) return <ErrorBox error={error} />;
  if (!data) return <p class="muted">loading…</p>;
  const c = data.get.Configuration;
  const env = c.Environment?.Variables || {};
  return (
    <section>
      <h2 id="function-name">{c.FunctionName}</h2>
      <p>
        <a href={href('logs', name)}>Logs</a> · <a href={href('sizing', name)}>Sizing</a>
      </p>
      <div class="columns">
        <div>
          <h3>Configuration</h3>
          <dl>
            <Field label="ARN">{c.FunctionArn}</Field>
            <Field label="Runtime">{c.Runtime}</Field>
            <Field label="Handler">{c.Handler}</Field>
            <Field label="Memory">{c.MemorySize} MB</Field>
            <Field label="Timeout">{c.Timeout} s</Field>
            <Field label="Ephemeral storage">{c.EphemeralStorage?.Size} MB</Field>
            <Field label="Architecture">{(c.Architectures || []).join(', ')}</Field>
            <Field label="Last modified">{fmtTime(c.LastModified)}</Field>
            <Field label="Revision">{c.RevisionId}</Field>
            <Field label="Layers">{(c.Layers || []).map((l) => l.Arn).join(', ') || null}</Field>
            <Field label="Environment">{Object.keys(env).length ? Object.keys(env).join(', ') : null}</Field>
            <Field label="Reserved concurrency">{data.get.Concurrency?.ReservedConcurrentExecutions ?? 'unreserved'}</Field>
          </dl>
          <h3>Code</h3>
          <p>
            {fmtBytes(c.CodeSize)}, sha256 {c.CodeSha256} ·{' '}
            <a href={data.get.Code?.Location} download={`${name}.zip`} id="download">
              Download .zip
            </a>{' '}
            <span class="muted">(a link valid for 10 minutes)</span>
          </p>
          <h3>Versions</h3>
          <table>
            <thead>
              <tr>
                <th>Version</th>
                <th>Description</th>
                <th>Last modified</th>
              </tr>
            </thead>
            <tbody>
              {data.versions.map((v) => (
                <tr key={v.Version}>
                  <td>{v.Version}</td>
                  <td>{v.Description}</td>
                  <td>{fmtTime(v.LastModified)}</td>
                </tr>
              ))}
            </tbody>
          </table>
          <h3>Aliases</h3>
          {data.aliases.length ? (
            <table>
              <thead>
                <tr>
                  <th>Alias</th>
                  <th>Version</th>
                  <th>Routing</th>
                </tr>
              </thead>
              <tbody>
                {data.aliases.map((a) => (
                  <tr key={a.Name}>
                    <td>{a.Name}</td>
                    <td>{a.FunctionVersion}</td>
                    <td>
                      {Object.entries(a.RoutingConfig?.AdditionalVersionWeights || {})
                        .map(([v, w]) => `${v}: ${Math.round(w * 100)}%`)
                        .join(', ')}
                    </td>
                  </tr>
                ))}
              </tbody>
            </table>
          ) : (
            <p class="muted">None.</p>
          )}
          <h3>Provisioned concurrency</h3>
          {data.provisioned.length ? (
            <table id="provisioned">
              <thead>
                <tr>
                  <th>Qualifier</th>
                  <th>Requested</th>
                  <th>Available</th>
                  <th>Status</th>
                </tr>
              </thead>
              <tbody>
                {data.provisioned.map((p) => (
                  <tr key={p.FunctionArn}>
                    <td>{p.FunctionArn.split(':').pop()}</td>
                    <td class="num">{p.RequestedProvisionedConcurrentExecutions}</td>
                    <td class="num">{p.AvailableProvisionedConcurrentExecutions}</td>
                    <td>
                      {p.Status}
                      {p.StatusReason ? `: ${p.StatusReason}` : ''}
                    </td>
                  </tr>
                ))}
              </tbody>
            </table>
          ) : (
            <p class="muted">None.</p>
          )}
          <h3>Function URL</h3>
          {data.urls.length ? (
            data.urls.map((u) => (
              <p key={u.FunctionUrl}>
                <code>{u.FunctionUrl}</code> ({u.AuthType}
                {u.InvokeMode ? `, ${u.InvokeMode}` : ''})
              </p>
            ))
          ) : (
            <p class="muted">None.</p>
          )}
        </div>
        <Invoke name={name} />
      </div>
    </section>
  );
}

function decodeLog(b64) {
  if (!b64) return '';
  const bytes = Uint8Array.from(atob(b64), (ch) => ch.charCodeAt(0));
  return new TextDecoder().decode(bytes);
}

function Invoke({ name }) {
  const [payload, setPayload] = useState('{}');
  const [result, setResult] = useState(null);
  const [error, setError] = useState(null);
  const [busy, setBusy] = useState(false);
  let parseError = null;
  try {
    JSON.parse(payload);
  } catch (e) {
    parseError = e.message;
  }
  const invoke = async (e) => {
    e.preventDefault();
    if (parseError) return;
    setBusy(true);
    setError(null);
    const started = performance.now();
    try {
      const r = await call('POST', ['2015-03-31', 'functions', name, 'invocations'], {
        body: payload,
        headers: { 'X-Amz-Log-Type': 'Tail', 'X-Amz-Invocation-Type': 'RequestResponse' },
      });
      const log = decodeLog(r.headers.get('X-Amz-Log-Result'));
      let shown = r.body;
      try {
        shown = JSON.stringify(JSON.parse(r.body), null, 2);
      } catch {
        /* not JSON: shown as it came */
      }
      setResult({
        status: r.status,
        functionError: r.headers.get('X-Amz-Function-Error'),
        version: r.headers.get('X-Amz-Executed-Version'),
        start: r.headers.get('X-Ember-Start'),
        requestId: r.headers.get('x-amzn-RequestId'),
        payload: shown,
        log,
        report: log.split('\n').find((l) => l.startsWith('REPORT')) || '',
        ms: performance.now() - started,
      });
    } catch (err) {
      setResult(null);
      setError(err);
    } finally {
      setBusy(false);
    }
  };
  return (
    <div class="invoke">
      <h3>Invoke</h3>
      <form onSubmit={invoke} id="invoke">
        <label>
          Payload (JSON)
          <textarea name="payload" rows="6" spellcheck="false" value={payload} onInput={(e) => setPayload(e.currentTarget.value)} />
        </label>
        {parseError ? <p class="error">Not JSON: {parseError}</p> : null}
        <button type="submit" disabled={busy || !!parseError}>
          {busy ? 'Invoking…' : 'Invoke'}
        </button>
      </form>
      <ErrorBox error={error} />
      {result ? (
        <div id="result">
          <p>
            <span class={result.functionError ? 'badge bad' : 'badge ok'}>{result.functionError ? `Error (${result.functionError})` : 'Succeeded'}</span>{' '}
            HTTP {result.status} · version {result.version} · {result.start} start · {result.ms.toFixed(0)} ms round trip · request{' '}
            <code>{result.requestId}</code>
          </p>
          <h4>Result</h4>
          <pre id="result-payload">{result.payload}</pre>
          <h4>REPORT</h4>
          <pre id="result-report">{result.report}</pre>
          <h4>Log (its last 4 KB)</h4>
          <pre id="result-log">{result.log}</pre>
        </div>
      ) : null}
    </div>
  );
}
