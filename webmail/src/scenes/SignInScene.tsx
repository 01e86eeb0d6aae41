/** Before sign-in: what this is, and the button that goes to the domain's Authorization Server. */
import styled from 'styled-components';
import { Button } from '../components/Button.js';

const Page = styled.main`
  display: grid;
  place-items: center;
  min-height: 100%;
  padding: 1.5rem;
`;

const Card = styled.div`
  width: min(100%, 24rem);
  padding: 2rem 1.5rem;
  background: ${(p) => p.theme.color.surface};
  border: 1px solid ${(p) => p.theme.color.border};
  border-radius: 12px;
  text-align: center;
  h1 {
    margin: 0.5rem 0;
    font-size: 1.4rem;
  }
  p {
    color: ${(p) => p.theme.color.textMuted};
  }
`;

const Alert = styled.p`
  color: ${(p) => p.theme.color.danger} !important;
`;

export function SignInScene({
  domain,
  error,
  busy,
  onSignIn,
}: {
  domain: string | undefined;
  error: string | undefined;
  busy: boolean;
  onSignIn: () => void;
}) {
  return (
    <Page>
      <Card>
        <img src="/icon.svg" alt="" width={56} height={56} />
        <h1>Federizer mail</h1>
        {domain && <p>{domain}</p>}
        {error && <Alert role="alert">{error}</Alert>}
        <Button type="button" $variant="primary" onClick={onSignIn} disabled={busy} style={{ margin: '0 auto' }}>
          {busy ? 'Opening the sign-in page…' : 'Sign in'}
        </Button>
      </Card>
    </Page>
  );
}
