"""An intent router: answer a text with its intent's answer, from an FAQ, or hand it over to a person.

`config` reads `route.yaml`; `route` decides; `faq` searches the FAQ by embedding similarity; `evaluation` scores
the routes of a labelled file; `files` is `adaptext route`. `serve --route` answers `POST /route` with the same
`Router`.
"""
