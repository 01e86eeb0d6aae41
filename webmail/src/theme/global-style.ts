import { createGlobalStyle } from 'styled-components';

export const GlobalStyle = createGlobalStyle`
  *, *::before, *::after { box-sizing: border-box; }
  html, body, #root { height: 100%; }
  body {
    margin: 0;
    font-family: ${(p) => p.theme.font.body};
    font-size: 15px;
    line-height: 1.45;
    color: ${(p) => p.theme.color.text};
    background: ${(p) => p.theme.color.background};
    color-scheme: ${(p) => p.theme.scheme};
    -webkit-font-smoothing: antialiased;
  }
  :focus-visible { outline: 2px solid ${(p) => p.theme.color.focus}; outline-offset: 2px; }
  button, input, textarea, select { font: inherit; color: inherit; }
  a { color: ${(p) => p.theme.color.accent}; }
  .visually-hidden {
    position: absolute !important; width: 1px; height: 1px; padding: 0; margin: -1px;
    overflow: hidden; clip: rect(0 0 0 0); white-space: nowrap; border: 0;
  }
  @media (prefers-reduced-motion: reduce) {
    *, *::before, *::after { transition: none !important; animation: none !important; }
  }
`;
