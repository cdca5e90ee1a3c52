// The Logs page: a function's invocation logs, live. The same stream as `ember logs --follow`:
// `GET /ember/v1/functions/{name}/logs`, the newest first, then `After` the last `Seq` seen,
// once a second while the tab is visible. Filtered here by request id and errors only.
import { useEffect, useRef, useState } from 'preact/hooks';
import { json, listFunctions } from './api.js';
import { ErrorBox, fmtTime, href, usePoll } from './util.jsx';

/** Kept in the page at most; older invocations scroll out. */
const KEEP = 500;
const FOLLOW_MS = 1000;

/** An invocation that failed: its REPORT has a Status, or the runtime logged an error. */
export const isError = (message) => /\tStatus: (error|timeout)|\[ERROR\]|Traceback \(most recent call last\)/.test(message);

function Picker({ name, page }) {
  const { data } = usePoll(listFunctions, 0, []);
  return (
    <select
      id="function-picker"
      value={name || ''}
      onChange={(e) => {
        location.hash = href(page, e.currentTarget.value);
      }}
    >
      <option value="" disabled>
        Choose a function
      </option>
      {(data || []).map((f) => (
        <option key={f.FunctionName} value={f.FunctionName}>
          {f.FunctionName}
        </option>
      ))}
    </select>
  );
}
export { Picker };

export function LogsPage({ name }) {
  const [events, setEvents] = useState([]);
  const [requestId, setRequestId] = useState('');
  const [errorsOnly, setErrorsOnly] = useState(false);
  const after = useRef(null);
  useEffect(() => {
    setEvents([]);
    after.current = null;
  }, [name]);
  const { error } = usePoll(
    async () => {
      if (!name) return null;
      const query = after.current === null ? { Limit: 50 } : { After: after.current, Limit: 1000 };
      const page = await json('GET', ['ember', 'v1', 'functions', name, 'logs'], { query });
      after.current = page.NextAfter;
      if (page.Events.length) setEvents((old) => [...old, ...page.Events].slice(-KEEP));
      return null;
    },
    FOLLOW_MS,
    [name],
  );
  const shown = events.filter((e) => (!requestId || e.RequestId.includes(requestId.trim())) && (!errorsOnly || isError(e.Message)));
  return (
    <section>
      <h2>Logs</h2>
      <div class="toolbar">
        <Picker name={name} page="logs" />
        <input type="search" placeholder="Request id" value={requestId} onInput={(e) => setRequestId(e.currentTarget.value)} id="request-filter" />
        <label class="inline">
          <input type="checkbox" checked={errorsOnly} onChange={(e) => setErrorsOnly(e.currentTarget.checked)} id="errors-only" /> Errors only
        </label>
        {name ? <span class="live">● live</span> : null}
      </div>
      <ErrorBox error={error} />
      {name ? (
        <div id="logs">
          {shown.length ? null : <p class="muted">No invocation logs{events.length ? ' match' : ' yet'}.</p>}
          {shown
            .slice()
            .reverse()
            .map((e) => (
              <article key={e.Seq} class={isError(e.Message) ? 'log bad' : 'log'} data-request-id={e.RequestId}>
                <header>
                  {fmtTime(new Date(e.Timestamp).toISOString())} · <code>{e.RequestId}</code>
                </header>
                <pre>{e.Message}</pre>
              </article>
            ))}
        </div>
      ) : null}
    </section>
  );
}
