/**
 * The protocol library's browser entry (address lists, the leaf part's Content-Type, the message model): the
 * webmail parses addresses exactly as the mailbox does, without bundling the node:crypto half of the library.
 */
export {
  externalContentType,
  headerName,
  headerValue,
  isHeadersBlock,
  normalizeAddress,
  parseAddressList,
  parseParameterized,
  parseSingleMailbox,
  ProtocolError,
  type Block,
  type Body,
  type Header,
  type HeadersBlock,
  type Mailbox,
  type Message as PlaceholderMessage,
  type Part,
} from '@federizer/protocol/browser';
