r"""What counts as a blank: Go's `unicode.IsSpace`, which BuildKit's parser uses.

Python's `str.isspace()` and regex `\s` also count \x1c-\x1f as blanks and Go does
not, so the set is spelled out once here for every module that splits text.
"""

__all__ = ["GO_SPACE"]

# The White_Space property: what Go's unicode.IsSpace accepts.
GO_SPACE = (
    "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005"
    "\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)
