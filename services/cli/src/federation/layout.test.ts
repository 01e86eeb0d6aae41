import { describe, expect, it } from 'vitest';
import { checkDomains, demoUserOf, fixedPorts, highestFixedPort, hostOf } from './layout.js';

describe('the layout of a local federation', () => {
  it('gives each domain ports from the base and its position, the DNS server the base itself', () => {
    expect(fixedPorts(8400, 0)).toEqual({ as: 8410, mailbox: 8411, webmail: 8412 });
    expect(fixedPorts(8400, 2)).toEqual({ as: 8430, mailbox: 8431, webmail: 8432 });
    expect(highestFixedPort(8400, 3)).toBe(8432);
  });

  it('names hosts under localhost with the dots of the domain as dashes', () => {
    expect(hostOf('as', 'example.com')).toBe('as.example-com.localhost');
    expect(hostOf('webmail', 'mail.example.co.uk')).toBe('webmail.mail-example-co-uk.localhost');
  });

  it("has the issue's demo users for the default domains, and a name for any other", () => {
    expect(['example.com', 'example.net', 'example.org'].map((d, i) => demoUserOf(d, i).address)).toEqual([
      'alice@example.com',
      'bob@example.net',
      'bobby@example.org',
    ]);
    expect(demoUserOf('test.example', 0)).toEqual({ address: 'carol@test.example', displayName: 'Carol' });
    expect(demoUserOf('test.example', 3).address).toBe('frank@test.example');
  });

  it('normalizes domain names and refuses what the services would refuse', () => {
    expect(checkDomains([' Example.COM '])).toEqual(['example.com']);
    expect(() => checkDomains([])).toThrow('at least one domain is needed');
    expect(() => checkDomains(['localhost'])).toThrow('"localhost" is not a domain name');
    expect(() => checkDomains(Array.from({ length: 51 }, (_, i) => `d${i}.example`))).toThrow('at most 50 domains');
  });
});
