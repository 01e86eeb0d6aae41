/**
 * The typed theme (styled-components' DefaultTheme is this type, see styled.d.ts): a light and a dark
 * palette with the same names, chosen by the system's `prefers-color-scheme`.
 */

export interface Palette {
  readonly background: string;
  readonly surface: string;
  readonly surfaceRaised: string;
  readonly text: string;
  readonly textMuted: string;
  readonly border: string;
  readonly accent: string;
  readonly accentText: string;
  readonly selection: string;
  readonly hover: string;
  readonly focus: string;
  readonly danger: string;
  readonly success: string;
  readonly warning: string;
}

export interface Theme {
  readonly scheme: 'light' | 'dark';
  readonly color: Palette;
  readonly font: { readonly body: string; readonly mono: string };
  readonly radius: string;
  /** Below this width the app shows one pane at a time. */
  readonly narrow: string;
  readonly rowHeight: number;
}

const base = {
  font: {
    body: 'system-ui, -apple-system, "Segoe UI", Roboto, "Noto Sans", sans-serif',
    mono: 'ui-monospace, "SF Mono", Menlo, Consolas, monospace',
  },
  radius: '8px',
  narrow: '760px',
  rowHeight: 72,
} as const;

export const lightTheme: Theme = {
  ...base,
  scheme: 'light',
  color: {
    background: '#f5f6f8',
    surface: '#ffffff',
    surfaceRaised: '#ffffff',
    text: '#1b1f24',
    textMuted: '#5b6470',
    border: '#d9dde3',
    accent: '#2456c9',
    accentText: '#ffffff',
    selection: '#e3ebfb',
    hover: '#eef1f5',
    focus: '#1a4fd1',
    danger: '#b42318',
    success: '#1a7f37',
    warning: '#9a6700',
  },
};

export const darkTheme: Theme = {
  ...base,
  scheme: 'dark',
  color: {
    background: '#111418',
    surface: '#1a1e24',
    surfaceRaised: '#222831',
    text: '#e6e9ee',
    textMuted: '#9aa4b1',
    border: '#313945',
    accent: '#7aa2ff',
    accentText: '#0b1020',
    selection: '#24324f',
    hover: '#232a34',
    focus: '#9bb8ff',
    danger: '#ff8a80',
    success: '#6fdc8c',
    warning: '#f2c94c',
  },
};
