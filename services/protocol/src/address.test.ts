/** RFC 5322 §3.4 address lists (with RFC 6532 UTF-8 and the §4.4 obsolete forms) against address.ts. */
import { describe, expect, it } from 'vitest';
import { addressesOf, domainOf, normalizeAddress, parseAddressList, parseSingleMailbox } from './address.js';
import { ProtocolError } from './errors.js';

function thrown(f: () => unknown): ProtocolError {
  let error: unknown;
  try {
    f();
  } catch (e) {
    error = e;
  }
  expect(error, 'expected a ProtocolError to be thrown').toBeInstanceOf(ProtocolError);
  return error as ProtocolError;
}

const box = (name: string | undefined, local: string, domain: string) => ({
  name,
  address: `${local}@${domain}`,
  local,
  domain,
});

describe('parseSingleMailbox (RFC 5322 §3.4 mailbox)', () => {
  it('§3.4.1: a bare addr-spec has no display name', () => {
    expect(parseSingleMailbox('alice@example.com')).toEqual(box(undefined, 'alice', 'example.com'));
  });

  it('§3.4: a name-addr keeps its display name', () => {
    expect(parseSingleMailbox('Alice Example <alice@example.com>')).toEqual(
      box('Alice Example', 'alice', 'example.com'),
    );
  });

  it('§3.4: an angle-addr without a display name', () => {
    expect(parseSingleMailbox('<alice@example.com>')).toEqual(box(undefined, 'alice', 'example.com'));
  });

  it('§3.4.1: a dot-atom local part', () => {
    expect(parseSingleMailbox('alice.b.smith+tag@mail.example.com')).toEqual(
      box(undefined, 'alice.b.smith+tag', 'mail.example.com'),
    );
  });

  it('§3.2.4: a quoted display name with a comma and escaped quotes and backslash', () => {
    const m = parseSingleMailbox('"Doe, John \\"JD\\" \\\\ Jr" <john@example.com>');
    expect(m.name).toBe('Doe, John "JD" \\ Jr');
    expect(m.address).toBe('john@example.com');
  });

  it('§3.4.1: a quoted-string local part is kept quoted', () => {
    const m = parseSingleMailbox('"john doe"@example.com');
    expect(m.local).toBe('"john doe"');
    expect(m.address).toBe('"john doe"@example.com');
    expect(m.domain).toBe('example.com');
  });

  it('RFC 5321 §4.1.2: quotes a local part does not need are dropped, so "bob"@ names the account bob@', () => {
    for (const [written, address] of [
      ['"bob"@example.net', 'bob@example.net'],
      ['Bob <"bob.smith"@example.net>', 'bob.smith@example.net'],
      ['"bob".smith@example.net', 'bob.smith@example.net'],
      ['"bob smith"@example.net', '"bob smith"@example.net'],
      ['"bob."@example.net', '"bob."@example.net'],
      ['".bob"@example.net', '".bob"@example.net'],
      ['"bob@home"@example.net', '"bob@home"@example.net'],
      ['""@example.net', '""@example.net'],
    ] as const) {
      expect(parseSingleMailbox(written).address, written).toBe(address);
    }
    expect(parseAddressList('"bob"@example.net, "carol"@example.org').map((m) => m.address)).toEqual([
      'bob@example.net',
      'carol@example.org',
    ]);
  });

  it('§3.2.2: comments are skipped, including nested ones and escaped parentheses', () => {
    expect(parseSingleMailbox('alice@example.com (Alice (the (first)) one \\) here)')).toEqual(
      box(undefined, 'alice', 'example.com'),
    );
    expect(parseSingleMailbox('(team lead) Alice <alice(work)@(primary)example.com> (x)')).toEqual(
      box('Alice', 'alice', 'example.com'),
    );
  });

  it('§4.1: an obsolete phrase with a "." is a display name (John Q. Public)', () => {
    expect(parseSingleMailbox('John Q. Public <jqp@example.com>').name).toBe('John Q. Public');
  });

  it('RFC 6532 §3.2: UTF-8 display name, local part and domain', () => {
    expect(parseSingleMailbox('Jörg Müller <jörg@bücher.example>')).toEqual(
      box('Jörg Müller', 'jörg', 'bücher.example'),
    );
    expect(parseSingleMailbox('"Ðoe, Jäne 😀" <用户@例え.jp>')).toEqual(box('Ðoe, Jäne 😀', '用户', '例え.jp'));
  });

  it('the domain is lower-cased; the local part stays as written', () => {
    expect(parseSingleMailbox('Alice <Alice.Smith@Mail.EXAMPLE.com>')).toEqual(
      box('Alice', 'Alice.Smith', 'mail.example.com'),
    );
    expect(parseSingleMailbox('jörg@BÜCHER.Example').domain).toBe('bücher.example');
  });

  it('§3.4.1: a domain literal keeps its brackets', () => {
    expect(parseSingleMailbox('user@[192.0.2.1]')).toEqual(box(undefined, 'user', '[192.0.2.1]'));
    expect(parseSingleMailbox('Admin <root@[IPv6:2001:db8::1]>').domain).toBe('[ipv6:2001:db8::1]');
  });

  it.each([
    ['two mailboxes', 'alice@example.com, bob@example.net'],
    ['a group', 'Team: alice@example.com;'],
    ['an empty value', ''],
    ['no "@"', 'alice'],
    ['no domain', 'alice@'],
    ['no local part', '@example.com'],
    ['an unterminated angle-addr', 'Alice <alice@example.com'],
    ['a display name without angle brackets', 'Alice alice@example.com'],
    ['an unterminated quoted string', '"Alice <alice@example.com>'],
    ['an unterminated comment', 'alice@example.com (Alice'],
    ['an empty dot-atom label in the local part', 'a..b@example.com'],
    ['an empty domain label', 'alice@example..com'],
    ['a trailing dot in the domain', 'alice@example.com.'],
    ['an unterminated domain literal', 'alice@[192.0.2.1'],
    ['a "[" inside a domain literal', 'alice@[19[2.0.2.1]'],
    ['text after the mailbox', 'alice@example.com bob'],
    ['an unquoted comma in a display name', 'Doe, John <john@example.com>'],
  ])('§3.4: a From-style mailbox with %s is rejected with invalid_address', (_label, value) => {
    const err = thrown(() => parseSingleMailbox(value));
    expect(err.code).toBe('invalid_address');
  });
});

describe('parseAddressList (RFC 5322 §3.4 address-list)', () => {
  it('§3.4: a list of mailboxes, mixed forms', () => {
    expect(parseAddressList('alice@example.com, Bob <bob@example.net>,"Doe, Jane" <jane@example.org>')).toEqual([
      box(undefined, 'alice', 'example.com'),
      box('Bob', 'bob', 'example.net'),
      box('Doe, Jane', 'jane', 'example.org'),
    ]);
  });

  it('§3.4: a comma inside a quoted display name does not split the list', () => {
    const list = parseAddressList('"Smith, Alice" <alice@example.com>, "Jones, Bob \\"B\\"" <bob@example.net>');
    expect(list.map((m) => m.name)).toEqual(['Smith, Alice', 'Jones, Bob "B"']);
  });

  it('§3.2.2: comments and folding white space between addresses', () => {
    expect(
      parseAddressList('(first) alice@example.com (Alice),\r\n\t(second) Bob <bob@example.net> (Bob)').map(
        (m) => m.address,
      ),
    ).toEqual(['alice@example.com', 'bob@example.net']);
  });

  it('§3.4: `undisclosed-recipients:;` is an empty group, giving no mailboxes', () => {
    expect(parseAddressList('undisclosed-recipients:;')).toEqual([]);
    expect(parseAddressList('undisclosed-recipients: ;')).toEqual([]);
  });

  it('§3.4: a named group contributes its members', () => {
    expect(parseAddressList('Team: alice@example.com, Bob <bob@example.net>;')).toEqual([
      box(undefined, 'alice', 'example.com'),
      box('Bob', 'bob', 'example.net'),
    ]);
  });

  it('§3.4: groups and mailboxes mix in one list', () => {
    expect(
      parseAddressList('carol@example.org, "The Team": alice@example.com, bob@example.net;, dave@example.org').map(
        (m) => m.address,
      ),
    ).toEqual(['carol@example.org', 'alice@example.com', 'bob@example.net', 'dave@example.org']);
  });

  it('§4.1 obs-phrase: a group display name with a "." (as accepted in mailbox display names)', () => {
    expect(parseAddressList('Dept. A: alice@example.com;').map((m) => m.address)).toEqual(['alice@example.com']);
  });

  it('RFC 6532: UTF-8 group names and members', () => {
    expect(parseAddressList('Équipe: jörg@bücher.example, 用户@例え.jp;').map((m) => m.address)).toEqual([
      'jörg@bücher.example',
      '用户@例え.jp',
    ]);
  });

  it('domains are lower-cased in every member', () => {
    expect(parseAddressList('Alice@EXAMPLE.COM, Team: Bob@Example.Net;').map((m) => m.address)).toEqual([
      'Alice@example.com',
      'Bob@example.net',
    ]);
  });

  it('a domain literal in a list', () => {
    expect(parseAddressList('user@[192.0.2.1], other@example.com').map((m) => m.domain)).toEqual([
      '[192.0.2.1]',
      'example.com',
    ]);
  });

  it('an empty (or blank) list gives no mailboxes', () => {
    expect(parseAddressList('')).toEqual([]);
    expect(parseAddressList('  \t ')).toEqual([]);
    expect(parseAddressList('(nobody)')).toEqual([]);
  });

  it('§4.4 obs-addr-list: empty list elements are ignored', () => {
    expect(parseAddressList(', alice@example.com,, bob@example.net ,').map((m) => m.address)).toEqual([
      'alice@example.com',
      'bob@example.net',
    ]);
    expect(parseAddressList('alice@example.com, (just a comment) , bob@example.net').map((m) => m.address)).toEqual([
      'alice@example.com',
      'bob@example.net',
    ]);
  });

  it('§4.4 obs-mbox-list / obs-group-list: empty elements inside a group are ignored', () => {
    expect(parseAddressList('Team: , alice@example.com,, bob@example.net;').map((m) => m.address)).toEqual([
      'alice@example.com',
      'bob@example.net',
    ]);
    expect(parseAddressList('Team: , ;')).toEqual([]);
  });

  it.each([
    ['two addresses without a comma', 'alice@example.com bob@example.net'],
    ['a semicolon separator', 'alice@example.com; bob@example.net'],
    ['a group without its ";"', 'Team: alice@example.com, bob@example.net'],
    ['a bare word', 'alice'],
    ['a display name without angle brackets', 'Alice Smith alice@example.com'],
    ['an unquoted comma in a display name', 'Doe, John <john@example.com>'],
    ['an unterminated angle-addr', 'Bob <bob@example.net'],
    ['a missing domain', 'alice@, bob@example.net'],
    ['a nested group', 'Outer: Inner: alice@example.com;;'],
    ['a stray ">"', 'alice@example.com>'],
  ])('§3.4: an address list with %s is rejected with invalid_address', (_label, value) => {
    const err = thrown(() => parseAddressList(value));
    expect(err.code).toBe('invalid_address');
    expect(err.message.length).toBeGreaterThan(0);
  });
});

describe('address helpers', () => {
  it('addressesOf: group members included, compared lower-cased, deduplicated in order', () => {
    expect(
      addressesOf('Bob <bob@example.net>, Team: alice@example.com, BOB@EXAMPLE.NET;, undisclosed-recipients:;'),
    ).toEqual(['bob@example.net', 'alice@example.com']);
  });

  it('normalizeAddress lower-cases; domainOf takes the part after the last "@"', () => {
    expect(normalizeAddress('Alice@Example.COM')).toBe('alice@example.com');
    expect(domainOf('"a@b"@Example.COM')).toBe('example.com');
  });
});
