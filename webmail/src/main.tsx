/** The page's entry: registers the service worker, starts the app store, renders. */
import { StrictMode } from 'react';
import { createRoot } from 'react-dom/client';
import { AppStore } from './app/app-store.js';
import { App } from './app/App.js';

const store = new AppStore({
  location: window.location,
  history: window.history,
  serviceWorkerControls: () => navigator.serviceWorker?.controller != null,
  serviceWorkerRegistration: async () =>
    navigator.serviceWorker?.controller ? navigator.serviceWorker.ready : undefined,
});

async function registerServiceWorker(): Promise<void> {
  if (!('serviceWorker' in navigator) || import.meta.env.DEV) return;
  try {
    await navigator.serviceWorker.register('/sw.js', { scope: '/' });
  } catch {
    // Without it the app still works online; media are then read whole before they play.
  }
}

void registerServiceWorker();
void store.start();
createRoot(document.getElementById('root')!).render(
  <StrictMode>
    <App store={store} />
  </StrictMode>,
);
