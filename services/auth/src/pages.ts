/**
 * The AS's server-rendered pages: sign-in, sign-out, signed-out and errors. No JavaScript; labelled
 * fields, an error region announced by screen readers, visible focus, and colours that follow the
 * system's light or dark preference. Every dynamic value goes through `html`, which escapes it.
 */
import { createHash } from 'node:crypto';

const ESCAPES: Record<string, string> = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' };

export function escapeHtml(value: string): string {
  return value.replace(/[&<>"']/g, (c) => ESCAPES[c]!);
}

/** A trusted fragment of markup (already escaped or written here). */
export class Markup {
  constructor(readonly text: string) {}
  toString(): string {
    return this.text;
  }
}

/** Tagged template: interpolated strings are escaped, Markup is kept as is. */
export function html(strings: TemplateStringsArray, ...values: unknown[]): Markup {
  let out = strings[0]!;
  values.forEach((v, i) => {
    const text =
      v instanceof Markup
        ? v.text
        : Array.isArray(v)
          ? v.map((x) => (x instanceof Markup ? x.text : escapeHtml(String(x)))).join('')
          : escapeHtml(String(v ?? ''));
    out += text + strings[i + 1]!;
  });
  return new Markup(out);
}

const STYLE = `
:root{color-scheme:light dark;--bg:#f4f5f7;--card:#fff;--text:#1b1f24;--muted:#57606a;--accent:#0b57d0;--accent-text:#fff;--error:#b3261e;--border:#d0d7de}
@media (prefers-color-scheme:dark){:root{--bg:#0d1117;--card:#161b22;--text:#e6edf3;--muted:#9da7b3;--accent:#4c8df6;--accent-text:#0d1117;--error:#ff8a80;--border:#30363d}}
*{box-sizing:border-box}
body{margin:0;min-height:100vh;display:grid;place-items:center;background:var(--bg);color:var(--text);font:16px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif}
main{width:min(100% - 2rem,24rem);background:var(--card);border:1px solid var(--border);border-radius:12px;padding:2rem}
h1{font-size:1.4rem;margin:0 0 .25rem}
p{margin:.25rem 0 1rem;color:var(--muted)}
label{display:block;font-weight:600;margin:1rem 0 .25rem}
input{width:100%;padding:.65rem .75rem;font:inherit;color:inherit;background:transparent;border:1px solid var(--border);border-radius:8px}
button{margin-top:1.5rem;width:100%;padding:.7rem;font:inherit;font-weight:600;border:0;border-radius:8px;background:var(--accent);color:var(--accent-text);cursor:pointer}
button.secondary{background:transparent;color:var(--accent);border:1px solid var(--border)}
:focus-visible{outline:3px solid var(--accent);outline-offset:2px}
.error{color:var(--error);border-left:4px solid var(--error);padding-left:.75rem;margin:1rem 0}
.domain{font-weight:600;color:var(--text)}
footer{margin-top:1.5rem;font-size:.85rem;color:var(--muted)}
`;

/** The CSP hash of the one inline style, so the pages need no 'unsafe-inline'. */
export const STYLE_HASH = `sha256-${createHash('sha256').update(STYLE).digest('base64')}`;
/**
 * The element whose content that hash covers, byte for byte. Built here, outside the page's template,
 * which the formatter re-indents: white space it put around the style made the browser refuse it.
 */
const STYLE_ELEMENT = new Markup(`<style>${STYLE}</style>`);

export const PAGE_CSP = `default-src 'none'; style-src '${STYLE_HASH}'; img-src 'self' data:; base-uri 'none'; frame-ancestors 'none'`;

export function page(title: string, body: Markup): string {
  return html`<!doctype html>
    <html lang="en">
      <head>
        <meta charset="utf-8" />
        <meta name="viewport" content="width=device-width, initial-scale=1" />
        <meta name="referrer" content="no-referrer" />
        <link rel="icon" href="data:," />
        <title>${title}</title>
        ${STYLE_ELEMENT}
      </head>
      <body>
        <main>${body}</main>
      </body>
    </html> `.text;
}

export interface LoginPageInput {
  readonly action: string;
  readonly domain: string;
  readonly clientName: string;
  readonly csrf: string;
  readonly address?: string;
  readonly error?: string;
}

export function loginPage(input: LoginPageInput): string {
  const error =
    input.error === undefined ? '' : html`<div class="error" role="alert" id="login-error">${input.error}</div>`;
  const describedBy =
    input.error === undefined ? '' : new Markup(' aria-describedby="login-error" aria-invalid="true"');
  return page(
    `Sign in — ${input.domain}`,
    html`<h1>Sign in</h1>
      <p>to <span class="domain">${input.domain}</span> mail, for ${input.clientName}</p>
      ${error}
      <form method="post" action="${input.action}" novalidate>
        <input type="hidden" name="csrf" value="${input.csrf}" />
        <label for="address">Email address</label>
        <input
          id="address"
          name="address"
          type="email"
          autocomplete="username"
          required
          autofocus
          value="${input.address ?? ''}"
          ${describedBy}
        />
        <label for="password">Password</label>
        <input id="password" name="password" type="password" autocomplete="current-password" required${describedBy} />
        <button type="submit">Sign in</button>
      </form>
      <form method="post" action="${input.action.replace(/\/login$/, '/abort')}">
        <input type="hidden" name="csrf" value="${input.csrf}" />
        <button type="submit" class="secondary">Cancel</button>
      </form>`,
  );
}

/**
 * The provider hands over its own form (with its CSRF token); we add the buttons that submit it. The app
 * that sent the user here has already signed out (the webmail revokes its tokens first): what is asked is
 * whether the domain's own sign-in on this device ends too, or lets the next sign-in skip the password.
 */
export function logoutPage(form: string, domain: string): string {
  return page(
    `Sign out — ${domain}`,
    html`<h1>Sign out</h1>
      <p>
        You have signed out of the app. Sign out of <span class="domain">${domain}</span> mail on this device as well?
        If you do not, signing in here again will not ask for your password.
      </p>
      ${new Markup(form)}
      <button type="submit" form="op.logoutForm" name="logout" value="yes">Sign out</button>
      <button type="submit" form="op.logoutForm" class="secondary">Keep this device signed in</button>`,
  );
}

export function signedOutPage(domain: string): string {
  return page(
    `Signed out — ${domain}`,
    html`<h1>Signed out</h1>
      <p>You have signed out of <span class="domain">${domain}</span> mail.</p>`,
  );
}

export function errorPage(error: string, description: string | undefined): string {
  return page(
    'Something went wrong',
    html`<h1>Something went wrong</h1>
      <div class="error" role="alert"><strong>${error}</strong>${description ? html`: ${description}` : ''}</div>
      <footer>Go back to your mail app and try again.</footer>`,
  );
}
