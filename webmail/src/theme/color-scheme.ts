/** The system's colour scheme as a store: the theme follows it while the app runs. */
import { useSyncExternalStore } from 'react';
import { darkTheme, lightTheme, type Theme } from './theme.js';

const QUERY = '(prefers-color-scheme: dark)';

function media(): MediaQueryList | undefined {
  return typeof matchMedia === 'function' ? matchMedia(QUERY) : undefined;
}

function subscribe(listener: () => void): () => void {
  const list = media();
  list?.addEventListener('change', listener);
  return () => list?.removeEventListener('change', listener);
}

const isDark = () => media()?.matches ?? false;

export function useSystemTheme(): Theme {
  return useSyncExternalStore(subscribe, isDark, () => false) ? darkTheme : lightTheme;
}
