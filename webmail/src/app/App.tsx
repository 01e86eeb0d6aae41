/** The root: the theme that follows the system, and the scene of the app's phase. */
import styled, { ThemeProvider } from 'styled-components';
import { SignInScene } from '../scenes/SignInScene.js';
import { useSystemTheme } from '../theme/color-scheme.js';
import { GlobalStyle } from '../theme/global-style.js';
import type { AppStore } from './app-store.js';
import { Shell } from './Shell.js';
import { ServicesContext, useStore } from './use-store.js';

const Centered = styled.main`
  display: grid;
  place-items: center;
  min-height: 100%;
  padding: 1.5rem;
  color: ${(p) => p.theme.color.textMuted};
`;

export function App({ store }: { store: AppStore }) {
  const theme = useSystemTheme();
  const { phase, services, domain } = useStore(store);
  return (
    <ThemeProvider theme={theme}>
      <GlobalStyle />
      {phase.name === 'ready' && services ? (
        <ServicesContext.Provider value={services}>
          <Shell />
        </ServicesContext.Provider>
      ) : phase.name === 'signed-out' || phase.name === 'redirecting' ? (
        <SignInScene
          domain={domain}
          error={phase.name === 'signed-out' ? phase.error : undefined}
          busy={phase.name === 'redirecting'}
          onSignIn={() => void store.signIn()}
        />
      ) : phase.name === 'failed' ? (
        <Centered role="alert">The webmail cannot start: {phase.error}</Centered>
      ) : (
        <Centered role="status">Loading…</Centered>
      )}
    </ThemeProvider>
  );
}
