// Ember's web console: a single page, routed by the URL's fragment (#/functions, #/fleet, …).
import { render } from 'preact';
import { useEffect, useState } from 'preact/hooks';
import { session, signIn, signOut } from './api.js';
import { FunctionsPage, FunctionPage } from './functions.jsx';
import { LogsPage } from './logs.jsx';
import { SizingPage } from './sizing.jsx';
import { FleetPage } from './fleet.jsx';
import { ErrorBox } from './util.jsx';
import './style.css';

function route() {
  const parts = location.hash.replace(/^#\/?/, '').split('/').filter(Boolean).map(decodeURIComponent);
  return parts.length ? parts : ['functions'];
}

function SignIn({ onSignedIn }) {
  const [error, setError] = useState(null);
  const [busy, setBusy] = useState(false);
  const submit = async (e) => {
    e.preventDefault();
    const form = e.currentTarget;
    const id = form.elements.accessKeyId.value;
    const secret = form.elements.secretAccessKey.value;
    form.elements.secretAccessKey.value = '';
    setBusy(true);
    setError(null);
    try {
      onSignedIn(await signIn(id, secret));
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
    }
  };
  return (
    <main class="signin">
      <h1>Ember</h1>
      <form onSubmit={submit} id="signin">
        <label>
          Access key ID
          <input name="accessKeyId" autocomplete="username" required spellcheck="false" />
        </label>
        <label>
          Secret access key
          <input name="secretAccessKey" type="password" autocomplete="current-password" required />
        </label>
        <button type="submit" disabled={busy}>Sign in</button>
        <ErrorBox error={error} />
        <p class="hint">
          The secret never leaves this page: it derives today's signing key for this server's region, which this tab
          keeps until it closes or the UTC day ends, and every request is signed with SigV4.
        </p>
      </form>
    </main>
  );
}

function App() {
  const [me, setMe] = useState(session());
  const [parts, setParts] = useState(route());
  useEffect(() => {
    const on = () => setParts(route());
    const out = () => setMe(null);
    window.addEventListener('hashchange', on);
    window.addEventListener('ember-signed-out', out);
    return () => {
      window.removeEventListener('hashchange', on);
      window.removeEventListener('ember-signed-out', out);
    };
  }, []);
  if (!me) return <SignIn onSignedIn={setMe} />;
  const [page, name] = parts;
  const onSignedOut = () => {
    signOut();
    setMe(null);
  };
  const link = (to, label) => (
    <a href={`#/${to}`} class={page === to || (to === 'functions' && page === 'function') ? 'active' : ''}>
      {label}
    </a>
  );
  let body;
  if (page === 'function' && name) body = <FunctionPage name={name} />;
  else if (page === 'logs') body = <LogsPage name={name} />;
  else if (page === 'sizing') body = <SizingPage name={name} />;
  else if (page === 'fleet' && me.admin) body = <FleetPage />;
  else if (page === 'fleet') body = <p class="error">Only the administrator account sees the fleet.</p>;
  else body = <FunctionsPage />;
  return (
    <div class="app">
      <header>
        <span class="brand">Ember</span>
        <nav>
          {link('functions', 'Functions')}
          {link('logs', 'Logs')}
          {link('sizing', 'Sizing')}
          {me.admin ? link('fleet', 'Fleet') : null}
        </nav>
        <span class="who" id="account">
          {me.accountId}
          {me.admin ? ' (admin)' : ''}
        </span>
        <button class="link" onClick={onSignedOut} id="signout">Sign out</button>
      </header>
      <main>{body}</main>
    </div>
  );
}

render(<App />, document.getElementById('app'));
// When the first page is on screen (scripts/bench-console reads it).
requestAnimationFrame(() => performance.mark('ember-console-painted'));
