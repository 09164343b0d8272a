"""Writes the PII evaluation set (pii_eval.jsonl): short prose and technical texts with gold spans.

Run `python -m tasks.pii.eval.generate` to rewrite it (deterministic for a seed). Every personal value is
synthetic: names drawn from lists of common given and family names, emails at example domains, phone
numbers from ranges reserved for fiction or valid-format national numbers, Luhn-valid card numbers,
IBANs with valid mod-97 check digits, random IPs, SSNs with random groups.

Four kinds of text, each `{"id", "kind", "text", "spans": [{"start", "end", "entity"}]}`:
- prose_pii: everyday sentences holding one to three personal values;
- prose_clean: sentences with numbers, dates, prices and capitalized words but no personal data;
- tech_clean: Python-doc-like docstrings, doctests, grammar rules and reST text without personal data
  (keywords, CamelCase classes, ALL CAPS constants, "::", 0.0.0.0, decimals, big integers);
- tech_pii: technical text that does hold personal data (author lines, maintainers, hosts in logs,
  names in string literals and comments).

Labeling rules: PERSON is a person's name without a title ("Dr. Okafor" -> "Okafor"); LOCATION a city,
country or region; IP_ADDRESS an address that identifies a host (not 0.0.0.0, "::", 127.0.0.1 or a
netmask); product, language and system names (Python, Windows, Linux) are not PII.
"""
from __future__ import annotations

import argparse
import json
import random
import string
from pathlib import Path

OUT = Path(__file__).with_name("pii_eval.jsonl")
FIRST = ["Alice", "Omar", "Priya", "Jonas", "Mei", "Carlos", "Fatima", "Tomasz", "Ingrid", "Kwame", "Lucia",
         "Hiroshi", "Sophie", "Rahul", "Elena", "Daniel", "Amara", "Lars", "Nadia", "Peter", "Grace",
         "Mateo", "Hannah", "Yusuf", "Clara", "Dmitri", "Aisha", "Liam", "Sara", "Felix"]
LAST = ["Okafor", "Lindqvist", "Nakamura", "Kowalski", "Haddad", "Fernandez", "Schneider", "Patel",
        "Moreau", "Novak", "Brennan", "Castillo", "Adeyemi", "Johansson", "Rossi", "Takahashi", "Walsh",
        "Petrov", "Osei", "Dubois", "Harrington", "Mendoza", "Keller", "Nguyen", "Abara", "Whitfield"]
PLACES = ["Lisbon", "Nairobi", "Toronto", "Osaka", "Krakow", "Melbourne", "Bogota", "Rotterdam", "Glasgow",
          "Denver", "Marseille", "Hamburg", "Chennai", "Valparaiso", "Canada", "Kenya", "Portugal", "Norway",
          "Texas", "Bavaria", "Chicago", "Dublin", "Seattle", "Helsinki"]
DOMAINS = ["example.com", "example.org", "mail.example.net", "corp.example.co.uk", "uni.example.de"]


# ------------------------------------------------------------------------------------- values
def person(rng: random.Random) -> str:
    return f"{rng.choice(FIRST)} {rng.choice(LAST)}"


def email(rng: random.Random) -> str:
    first, last = rng.choice(FIRST).lower(), rng.choice(LAST).lower()
    user = rng.choice([f"{first}.{last}", f"{first[0]}{last}{rng.randint(1, 99)}", f"{first}_{last}"])
    return f"{user}@{rng.choice(DOMAINS)}"


def phone(rng: random.Random) -> str:
    def d(n: int) -> str:
        return "".join(rng.choice(string.digits) for _ in range(n))

    return rng.choice([f"(212) 555-{d(4)}", f"415-555-{d(4)}", f"+1 312 555 {d(4)}", f"+44 20 7946 0{d(3)}",
                       f"020 7946 0{d(3)}", f"+49 30 {d(8)}", f"+33 1 {d(2)} {d(2)} {d(2)} {d(2)}",
                       f"617.555.{d(4)}"])


def card(rng: random.Random) -> str:
    prefix = rng.choice(["4", "51", "52", "6011"])
    body = prefix + "".join(rng.choice(string.digits) for _ in range(15 - len(prefix)))
    total = 0
    for i, ch in enumerate(reversed(body)):
        n = int(ch) * (2 if i % 2 == 0 else 1)
        total += n - 9 if n > 9 else n
    number = body + str((10 - total % 10) % 10)
    sep = rng.choice([" ", "-", ""])
    return sep.join(number[i:i + 4] for i in range(0, 16, 4))


def iban(rng: random.Random) -> str:
    country, bban = rng.choice([("DE", "".join(rng.choice(string.digits) for _ in range(18))),
                                ("FR", "".join(rng.choice(string.digits) for _ in range(23))),
                                ("GB", "WEST" + "".join(rng.choice(string.digits) for _ in range(14)))])
    numeric = "".join(str(int(c, 36)) for c in bban + country + "00")
    code = f"{country}{98 - int(numeric) % 97:02d}{bban}"
    return " ".join(code[i:i + 4] for i in range(0, len(code), 4)) if rng.random() < 0.5 else code


def ip(rng: random.Random) -> str:
    if rng.random() < 0.75:
        first = rng.choice([n for n in range(11, 224) if n != 127])  # 127/8 is loopback: no host
        return ".".join(str(n) for n in [first] + [rng.randint(1, 254) for _ in range(3)])
    return ":".join(f"{rng.randint(1, 0xFFFF):x}" for _ in range(3)) + "::" + f"{rng.randint(1, 0xFFFF):x}"


def ssn(rng: random.Random) -> str:
    area = rng.choice([a for a in range(1, 900) if a != 666])
    return f"{area:03d}-{rng.randint(1, 99):02d}-{rng.randint(1, 9999):04d}"


VALUES = {"PERSON": person, "EMAIL_ADDRESS": email, "PHONE_NUMBER": phone, "CREDIT_CARD": card,
          "IBAN_CODE": iban, "IP_ADDRESS": ip, "US_SSN": ssn, "LOCATION": lambda r: r.choice(PLACES),
          "SURNAME": lambda r: r.choice(LAST)}
SLOT_ENTITY = {"SURNAME": "PERSON"}

# ---------------------------------------------------------------------------------- templates
# {SLOT} is filled with a synthetic value and labeled; {{ and }} are literal braces.
PROSE_PII = [
    "{PERSON} moved to {LOCATION} last spring and still writes every week.",
    "Please send the signed form to {EMAIL_ADDRESS} before Friday.",
    "You can reach {PERSON} on {PHONE_NUMBER} during office hours.",
    "Dr. {SURNAME} will see you at ten; her direct line is {PHONE_NUMBER}.",
    "The refund went back to the card ending in {CREDIT_CARD}, as requested.",
    "Wire the deposit to IBAN {IBAN_CODE} and quote your booking number.",
    "Our records show logins from {IP_ADDRESS} on three consecutive nights.",
    "His social security number, {US_SSN}, was printed on the old badge.",
    "Dear {PERSON}, thank you for your letter of 3 March.",
    "I met {PERSON} in {LOCATION}, where she was running a bakery.",
    "Contact {PERSON} ({EMAIL_ADDRESS}) if the parcel does not arrive.",
    "Mr. {SURNAME} paid with {CREDIT_CARD} and asked for a receipt.",
    "The tenant, {PERSON}, listed {PHONE_NUMBER} as an emergency number.",
    "Transfer the rent to {IBAN_CODE} by the first of the month.",
    "After the meeting {PERSON} flew back to {LOCATION}.",
    "Ask {SURNAME} about the invoice; he keeps the ledger.",
    "The complaint came from {EMAIL_ADDRESS}, signed by {PERSON}.",
    "SSN {US_SSN} belongs to the applicant from {LOCATION}.",
    "Someone at {IP_ADDRESS} tried to reset the password for {EMAIL_ADDRESS}.",
    "{PERSON} and {PERSON} opened a small shop near the harbour.",
    "Call {PHONE_NUMBER} and ask for {PERSON}.",
    "Last year {PERSON} left {LOCATION} for good.",
    "Her card number is {CREDIT_CARD}; the expiry date is on the back.",
    "Payments for the club go to {IBAN_CODE}, account holder {PERSON}.",
    "Prof. {PERSON} lectures on Tuesdays in room 204.",
]
PROSE_CLEAN = [
    "The meeting was moved to Thursday at 10.30 in the main hall.",
    "In 1848 the harbour froze for three weeks and 1,200 boats stayed in port.",
    "Prices rose by 4.5 per cent between 2019 and 2021.",
    "Chapter 12 starts on page 214 and runs to page 239.",
    "Mark the boxes with a red pen before you seal them.",
    "Turn left after the bridge; the farm is 3.2 miles further on.",
    "Bring 250 grams of flour, two eggs and a pinch of salt.",
    "The train leaves at 17:45 from platform 9 and arrives at 21:10.",
    "Order number 4471-22 was shipped on 14 May.",
    "Sunday mornings are quiet, apart from the bells at 8 and 11.",
    "The committee approved the budget of 35,000 dollars for 2024.",
    "Spring came early; the orchard was in bloom by the end of March.",
    "Winter tyres are required from November to April.",
    "Version 2.3.1 of the manual fixes the tables in section 4.",
    "Grace periods of 30 days apply to all renewals.",
    "Rose petals and mint leaves make a fine summer tea.",
    "The survey counted 17,450 households and 42,913 residents.",
    "Read the instructions twice, then assemble the frame.",
    "Our office is closed on public holidays and on 24 December.",
    "The recipe serves 6 and takes about 45 minutes.",
    "Autumn in the valley brings fog, cider and long walks.",
    "Will you bring the chairs, or shall I?",
    "Summer school runs from 3 July to 11 August.",
    "Honey, lemon and ginger soothe a sore throat.",
    "The museum opens at 9 and the last entry is at 16:30.",
    "Mind the gap between the train and the platform.",
    "Page 17 of the report shows a 12.5 per cent drop.",
    "Grant applications close on the last Friday of June.",
    "Chase the dog out of the garden before the guests arrive.",
    "Hope is a good breakfast but a bad supper.",
]
TECH_CLEAN = [
    "Convert a string to an integer. Raises ValueError if the string is not a valid literal.",
    "Return True if the path exists, else False.",
    "Returns None when the queue is empty.",
    "Format the value according to the format specification.",
    "Split the string at the first occurrence of sep.",
    "The SimpleCookie class parses HTTP cookies; see also BaseCookie.",
    "Insert an item at a given position. Remove the first item whose value is x.",
    "On Windows, the msvcrt module is used; on Linux and macOS, termios.",
    "Python 3.12 adds the type statement and removes the distutils package.",
    "The ARGS parameter lets you specify the argument list directly.",
    "Set MAX_RETRIES to 0 to disable retries; DEFAULT_TIMEOUT is 30.",
    "   assert_stmt ::= \"assert\" expression [\",\" expression]",
    "   for_stmt ::= \"for\" target_list \"in\" starred_list \":\" suite",
    ">>> ipaddress.ip_address('0.0.0.0').is_unspecified\nTrue",
    ">>> ipaddress.ip_address('::').is_unspecified\nTrue",
    "Bind the server to 0.0.0.0 to listen on all interfaces, or to 127.0.0.1 for local use only.",
    "The netmask 255.255.255.0 selects a /24 network.",
    ">>> Decimal('1').next_minus()\nDecimal('0.999999999')",
    ">>> 2**31 - 1\n2147483647",
    "Some examples of integer literals:\n\n   7 2147483647 0o177 0b100110111\n   3 79228162514264337593543950336",
    "Use the Enum class to define constants; Counter is a dict subclass for counting.",
    "The Queue module implements multi-producer, multi-consumer queues.",
    "Generate a random UUID with uuid4().",
    "class MyHandler(BaseHTTPRequestHandler):\n    def do_GET(self):\n        self.send_response(200)",
    "The JSON encoder supports dict, list, tuple, str, int, float, True, False and None.",
    "Copy the file to the target directory. Delete the temporary file afterwards.",
    "Normalize the path: collapse redundant separators and up-level references.",
    "   running = False\n   while not running:\n       running = poll()",
    "The sys.argv list contains the command line arguments passed to a Python script.",
    "Unicode strings are sequences of code points; UTF-8 is the default encoding.",
    "Push the frame onto the stack; Pop removes it again.",
    "If x==y the comparison returns True; NaN compares unequal to itself.",
    "Seek to the given byte offset; Tell returns the current position.",
    "The Pdb class is the debugger class; see also the bdb module.",
    "Use `os.path.join(base, name)` to build paths portably.",
    "``Popen`` objects have ``wait()`` and ``communicate()`` methods.",
    "Raises KeyError if the key is missing.\n\nArgs:\n    key: the lookup key.\n    default: returned instead.",
    "The RequestHandlerClass is instantiated once per request.",
    "SMTP and LMTP clients share most of their code.",
    "The TestCase class provides assertEqual and assertRaises.",
    "Refer to the Format String Syntax section for details.",
    "Appending to a list is amortized O(1).",
    "Keyword arguments must follow positional arguments.",
    "The Path class represents filesystem paths with semantics for the platform.",
    "Context managers implement __enter__ and __exit__.",
    "sNaN signals InvalidOperation; Inexact is raised when rounding occurs.",
    "Await the coroutine, then Else branches run when no exception was raised.",
    "   >>> hex(3232235521)\n   '0xc0a80001'",
    "The Tkinter Scrollbar widget is attached to a Listbox with yscrollcommand.",
    "Namespace packages have no __init__.py file.",
    "Parameters\n----------\nbuffer : bytes\n    The raw data.\nstrict : bool, optional\n    Raise on errors.",
    "Returns\n-------\nint\n    The number of bytes written, or -1 on EOF.",
    "Examples\n--------\n>>> Fraction(3, 4) + Fraction(1, 4)\nFraction(1, 1)",
    "Changed in version 3.8: Added the *flags* parameter.\nDeprecated since version 3.12.",
    "Traceback (most recent call last):\n  File \"main.py\", line 3, in <module>\nKeyError: 'Title'",
    "$ python -m venv .venv\n$ source .venv/bin/activate\n(.venv) $ pip install requests",
    "[server]\nhost = 0.0.0.0\nport = 8080\nworkers = 4\nlog_level = INFO",
    "SELECT Name, Country FROM Customers WHERE Country = 'Mexico' ORDER BY Name;",
    "{{\"Name\": \"Widget\", \"Price\": 9.99, \"InStock\": true}}",
    "usage: backup [-h] [--Dest DIR] [--Verbose] SOURCE\n\nCopy SOURCE to DIR.",
    "The Observer pattern decouples the Subject from its Listeners.",
    "Lambda functions in Python are limited to a single expression.",
    "Tuples are immutable; Lists are not. Sets hold unique hashable elements.",
    "Fixed a race in ThreadPoolExecutor.shutdown (gh-10482).",
    "Heap queue algorithm, also known as the priority queue algorithm.",
    "Calendar printing functions: Monday is the first day of the week by default.",
    "Sorting HOW TO\n**************\n\nPython lists have a built-in sort method.",
    "Logging Cookbook\n================\n\nUse a QueueHandler to log from several processes.",
    "Descriptor Guide\n----------------\n\nDescriptors let objects customize attribute lookup.",
    "Mersenne Twister is the core generator; Gaussian and Weibull distributions are available.",
    "Dijkstra's algorithm finds shortest paths; Huffman coding compresses text.",
    "The Boolean operations are and, or and not; Unary minus negates its argument.",
    "Optional Arguments\n~~~~~~~~~~~~~~~~~~\n\nOptional arguments start with a dash.",
    "Raises:\n    TypeError: if Name is not a str.\n    OverflowError: if Size exceeds MAXSIZE.",
    "Yields:\n    Tuples of (Key, Value) in insertion order.",
    "INFO 2024-05-02 10:11:12 Worker started (pid 4312, threads 8)",
    "WARNING: Retrying (Retry(total=4)) after connection broken by ReadTimeoutError.",
    "Note: On macOS the default start method is spawn; on Linux it is fork.",
    "Use Ctrl-C to interrupt, and Ctrl-D (Ctrl-Z on Windows) to exit the REPL.",
    "The GIL prevents two threads from executing Python bytecode at once.",
    "Memoryview objects expose the buffer protocol without copying.",
    "Set Verbose to True to print every Request and Response.",
    "Iterate over Items, then call Close when done.",
    "Serialize obj to a JSON formatted str; Deserialize does the reverse.",
    "Compile the Pattern once and Match it many times.",
    "Percent-encode the URL path; Quote and Unquote handle the rest.",
    "Checksum: adler32 and crc32 return unsigned integers since Python 3.0.",
    "Epoch seconds 1700000000 correspond to 14 November 2023.",
    "The float 3.141592653589793 is the closest double to pi.",
    "Maximum recursion depth is 1000 by default; sys.setrecursionlimit(5000) raises it.",
    "Address family AF_INET6 with scope id 0 binds to every interface (::).",
    "The broadcast address of 10.0.0.0/8 is 10.255.255.255; the netmask is 255.0.0.0.",
    "Port 443 is HTTPS, 22 is SSH and 5432 is PostgreSQL.",
    "Mask the value with 0xFFFF and shift it right by 16 bits.",
    "UUID('12345678-1234-5678-1234-567812345678').version returns 4 here.",
    "Hash randomization uses PYTHONHASHSEED; set it to 0 to disable.",
    "A Decimal('3.14159265358979323846') keeps every digit you give it.",
    "Sleep for 0.25 seconds between retries, up to 12 attempts.",
    "ISBN 978-0-596-15806-4 identifies the second edition.",
    "Build 20240501.3 passed 1834 tests in 412.57 seconds.",
]
TECH_PII = [
    "Written by {PERSON} ({EMAIL_ADDRESS}).",
    "Copyright (c) 2004 {PERSON}. All rights reserved.",
    "Maintainer: {PERSON} <{EMAIL_ADDRESS}>",
    "# Author: {PERSON}\nimport os\n",
    "author = \"{PERSON}\"\nauthor_email = \"{EMAIL_ADDRESS}\"",
    "2024-03-01 12:00:03 sshd: Accepted password for admin from {IP_ADDRESS} port 52211",
    "conn = connect(host=\"{IP_ADDRESS}\", port=5432)",
    "Bug reports go to {EMAIL_ADDRESS}; for urgent issues call {PHONE_NUMBER}.",
    "Thanks to {PERSON} for the original patch and to {PERSON} for the review.",
    "The module was ported to Python 3 by {PERSON}.",
    "Support line for {LOCATION} customers: {PHONE_NUMBER}.",
    "customer = {{\"name\": \"{PERSON}\", \"card\": \"{CREDIT_CARD}\"}}",
    "payee_iban = \"{IBAN_CODE}\"  # {PERSON}'s account",
    "ssn = \"{US_SSN}\"  # test record, remove before release",
    "Originally contributed by {PERSON}; rewritten by {PERSON} in 2019.",
    "Requests from {IP_ADDRESS} were rate limited after 100 calls.",
    "Release manager: {PERSON} ({EMAIL_ADDRESS})",
    ".. sectionauthor:: {PERSON} <{EMAIL_ADDRESS}>",
    "Reviewed-by: {PERSON} <{EMAIL_ADDRESS}>\nSigned-off-by: {PERSON} <{EMAIL_ADDRESS}>",
    "ERROR login failed for user {EMAIL_ADDRESS} from {IP_ADDRESS}",
    "INSERT INTO users (name, phone) VALUES ('{PERSON}', '{PHONE_NUMBER}');",
    "The on-call engineer this week is {PERSON}, reachable at {PHONE_NUMBER}.",
    "Patch by {PERSON}.",
    "{{\"user\": \"{EMAIL_ADDRESS}\", \"last_ip\": \"{IP_ADDRESS}\"}}",
]


def fill(template: str, rng: random.Random) -> tuple[str, list[dict]]:
    """The text with every {SLOT} replaced by a synthetic value, and the labeled spans."""
    out, spans, i = "", [], 0
    while i < len(template):
        if template.startswith("{{", i) or template.startswith("}}", i):
            out += template[i]
            i += 2
            continue
        if template[i] == "{":
            j = template.index("}", i)
            slot = template[i + 1:j]
            value = VALUES[slot](rng)
            spans.append({"start": len(out), "end": len(out) + len(value),
                          "entity": SLOT_ENTITY.get(slot, slot)})
            out += value
            i = j + 1
            continue
        out += template[i]
        i += 1
    return out, spans


def build(seed: int = 0, copies: dict[str, int] | None = None) -> list[dict]:
    """Every template filled `copies[kind]` times (different values each time); clean texts once."""
    rng = random.Random(seed)
    copies = copies or {"prose_pii": 6, "prose_clean": 1, "tech_clean": 1, "tech_pii": 6}
    kinds = {"prose_pii": PROSE_PII, "prose_clean": PROSE_CLEAN, "tech_clean": TECH_CLEAN,
             "tech_pii": TECH_PII}
    records = []
    for kind, templates in kinds.items():
        for t, template in enumerate(templates):
            for c in range(copies[kind]):
                text, spans = fill(template, rng)
                records.append({"id": f"{kind}-{t:02d}-{c}", "kind": kind, "text": text, "spans": spans})
    return records


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    records = build(args.seed)
    with args.out.open("w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    print(f"wrote {len(records)} texts, {sum(len(r['spans']) for r in records)} labeled spans to {args.out}")


if __name__ == "__main__":
    main()
