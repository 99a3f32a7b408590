from adaptext.cli import main

raise SystemExit(main())
