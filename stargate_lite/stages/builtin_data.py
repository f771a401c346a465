"""Built-in default data for stargate-lite: the everyday tasks, seed personas and
persona names that the tiny and default recipes use, written for this project."""

# Everyday requests whose best answer depends on who is asking. 72 in total,
# spread over seven themes: food & cooking, careers & work, learning & skills,
# travel, health & fitness, money & home, hobbies & leisure.
TASKS: tuple[str, ...] = (
    # Food & cooking
    "Can you suggest a weekly meal plan for me?",
    "What should I cook for dinner tonight?",
    "Can you help me plan a menu for a dinner party this weekend?",
    "What are some good lunches I can pack for work?",
    "Recommend a few breakfast ideas that will keep me full until noon.",
    "What kitchen equipment is actually worth buying?",
    "How can I cut down my grocery bill without eating badly?",
    "Suggest a new cuisine I should try cooking at home.",
    "What snacks should I keep around the house?",
    "Can you give me a simple baking project to try this weekend?",
    "How should I get started with meal prepping on Sundays?",
    # Careers & work
    "Should I ask my manager for a raise this year?",
    "How can I make my resume stand out?",
    "What career path would suit me best?",
    "How do I prepare for a job interview next week?",
    "Can you help me organize my workday so I get more done?",
    "Is it a good idea for me to start a side business?",
    "How should I handle a disagreement with a coworker?",
    "What professional certification would be worth pursuing?",
    "Should I consider switching to remote work?",
    "How can I grow my professional network?",
    # Learning & skills
    "What should I read next?",
    "I want to learn a new language. Which one should I pick, and how do I start?",
    "Can you recommend an online course for me?",
    "How can I get better at public speaking?",
    "What is a good way for me to learn to code?",
    "Suggest a podcast I might enjoy.",
    "How can I build a daily study habit that sticks?",
    "What musical instrument should I take up?",
    "How can I improve my writing?",
    "Help me pick a practical skill to learn this year.",
    # Travel
    "Where should I go on vacation this summer?",
    "Can you plan a long weekend getaway for me?",
    "What should I pack for my next trip?",
    "Recommend a destination for a trip on my own.",
    "How should I spend a one-day layover in a big city?",
    "Is it better for me to travel by train or by plane on my next trip?",
    "Can you suggest a road trip route I would enjoy?",
    "What kind of accommodation should I book for my holiday?",
    "How can I travel more often without overspending?",
    "Suggest some things to do on a rainy day while I am traveling.",
    # Health & fitness
    "Can you design a workout routine for me?",
    "How can I sleep better?",
    "What is a realistic fitness goal for me over the next three months?",
    "Suggest some ways to manage stress during a busy week.",
    "Should I join a gym or exercise at home?",
    "How can I drink more water and fewer sugary drinks?",
    "What sport could I take up?",
    "Can you suggest some stretches I can do each morning?",
    "How can I stay active when I sit for most of the day?",
    "Help me train for my first running race.",
    "What healthy habits could I realistically add to my routine?",
    # Money & home
    "Can you help me make a monthly budget?",
    "How should I start saving for retirement?",
    "Should I rent or buy a home?",
    "What is a good way to pay down my debt?",
    "How can I make my living space feel more comfortable?",
    "What houseplants would do well in my home?",
    "Help me plan a small home improvement project.",
    "How can I lower my energy bills?",
    "What should I think about before getting a pet?",
    "How can I keep my home tidy with little effort?",
    # Hobbies & leisure
    "What hobby should I pick up?",
    "Can you recommend a movie for tonight?",
    "What board game should I buy?",
    "Suggest a gift for my best friend's birthday.",
    "How should I spend a free Saturday?",
    "What music should I listen to while I work?",
    "Can you suggest a creative project I could finish in a month?",
    "Help me plan a fun evening with friends.",
    "What TV series should I start watching?",
    "Recommend a video game I would enjoy.",
)

# Few-shot examples shown to a model when it writes new personas. Each is a
# (name, description) pair; the description is first person and opens with
# "I'm NAME." in capitals.
SEED_PERSONAS: tuple[tuple[str, str], ...] = (
    (
        "Tomas",
        "I'm TOMAS. I'm 19 and in my first year studying mechanical engineering "
        "in Cordoba, Argentina, where I share a cramped apartment with two "
        "classmates. I work weekend shifts at a bike repair shop, and I love "
        "fixing things, playing five-a-side football, and cooking big pots of "
        "stew to last the week. Money is tight, so I think hard before spending "
        "anything and I rarely eat out. I'm outgoing and a bit impatient, and I "
        "learn best by trying things with my hands rather than reading about them.",
    ),
    (
        "Odette",
        "I'm ODETTE. I'm 75, a retired primary school teacher, and I have lived "
        "alone in a small village outside Lyon, France, since my husband passed "
        "away. My mornings start with a walk to the bakery, and my afternoons go "
        "to my vegetable garden, crossword puzzles, and long phone calls with my "
        "grandchildren. Arthritis in my knees makes stairs and long walks hard, "
        "so I plan my outings carefully. I'm curious and still love learning, but "
        "I'm wary of gadgets and prefer clear, patient explanations.",
    ),
    (
        "Kwame",
        "I'm KWAME. I'm 42 and work night shifts as an emergency room nurse in "
        "Accra, Ghana. I'm married with three kids under twelve, and we share a "
        "busy family house with my mother-in-law. In my free time I enjoy "
        "highlife music, watching football, and looking after the mango tree in "
        "our yard. My schedule is irregular and I'm often tired, so anything I "
        "take on has to fit into short, unpredictable windows. I'm calm and "
        "practical, and I like advice that gets straight to the point.",
    ),
    (
        "Mei",
        "I'm MEI. I'm 33 and work as a data engineer at a fintech company in "
        "Singapore, living in a compact rented flat with my partner and our cat. "
        "I earn well and like spending on good coffee, travel, and bouldering "
        "classes, but I'm saving hard for a deposit on a home. I was diagnosed "
        "with type 1 diabetes as a teenager, so I keep a close eye on what I eat "
        "and when I exercise. I'm analytical and a little bit of a perfectionist, "
        "and I like to see the numbers behind a recommendation.",
    ),
    (
        "Ravi",
        "I'm RAVI. I'm 58 and run a small hardware shop in a market town in "
        "Punjab, India, which I took over from my father. I live with my wife, "
        "my son, and his young family, and like everyone in our household I'm "
        "vegetarian. I read the newspaper cover to cover, follow cricket closely, "
        "and recently started walking every evening because my doctor is worried "
        "about my blood pressure. I'm traditional and generous, and slow to trust "
        "new ideas until I see them work for someone I know.",
    ),
    (
        "Hanna",
        "I'm HANNA. I'm 27 and work as a freelance graphic designer from my "
        "ground-floor apartment in Helsinki, Finland. I've used a wheelchair since "
        "a car accident at sixteen, so accessibility shapes where I go and how I "
        "travel. I love sketching in cafes, indie video games, and swimming at "
        "the public pool twice a week. My income rises and falls from month to "
        "month, which makes planning ahead stressful. I'm dry-humored and "
        "independent, and I get annoyed when people assume what I can or can't do.",
    ),
)

# First names handed out to generated personas. Drawn from many cultures,
# distinct (case-insensitive), and different from the seed persona names.
PERSONA_NAMES: tuple[str, ...] = (
    "Amara", "Aiko", "Alejandro", "Amir", "Anika", "Arjun", "Astrid", "Ayesha",
    "Beatriz", "Bilal", "Bjorn", "Camila", "Chen", "Chiara", "Chidi", "Dalia",
    "Dmitri", "Elif", "Emeka", "Esperanza", "Farah", "Felipe", "Fatima", "Freya",
    "Giulia", "Hamid", "Haruto", "Helga", "Hiroshi", "Ines", "Ingrid", "Isabela",
    "Jamal", "Javier", "Jia", "Joon", "Kai", "Kalani", "Karim", "Katarzyna",
    "Keanu", "Kenji", "Khadija", "Kofi", "Lars", "Layla", "Leilani", "Lucia",
    "Maeve", "Malik", "Mariam", "Mateo", "Maya", "Mehmet", "Miguel", "Mila",
    "Nadia", "Naledi", "Nasser", "Nia", "Niamh", "Nikhil", "Nkechi", "Noor",
    "Obinna", "Olga", "Omar", "Oren", "Paolo", "Priya", "Quang", "Rafael",
    "Rania", "Rashid", "Rosa", "Saanvi", "Sakura", "Salma", "Samir", "Santiago",
    "Sanjay", "Sipho", "Siobhan", "Soren", "Sunita", "Tariq", "Thandiwe", "Tiago",
    "Tove", "Uma", "Valentina", "Vikram", "Wanjiru", "Wei", "Xiomara", "Yara",
    "Yasmin", "Yusuf", "Zainab", "Zeynep", "Zoltan", "Zuri", "Adaeze", "Akira",
    "Alana", "Anders", "Aroha", "Bao", "Dario", "Ebru", "Eitan", "Farid",
    "Greta", "Hoang", "Ikaika", "Imani", "Kavya", "Kiri", "Laszlo", "Linh",
    "Lorenzo", "Magnus", "Marisol", "Mustafa", "Nomvula", "Olusegun", "Pavel", "Petra",
    "Rahel", "Renata", "Sergei", "Shira", "Tendai", "Wiremu", "Yosef", "Yuki",
    "Zara", "Abebe", "Bongani", "Dilnoza", "Ewa", "Ferhat", "Gulnara", "Hyun",
    "Ilse", "Jomo", "Kiona", "Lwazi", "Makana", "Nayeli", "Oksana", "Pita",
    "Rustam", "Sione", "Tala", "Ulla", "Vusi", "Aisling", "Bram", "Citlali",
)

# Personas for a user who tells only what a turn asks for (DESIGN.md section 11). Such a user reveals a persona a
# fact at a time, and a fact is a sentence (stargate_lite.facts.persona_facts), so each sentence here states one
# circumstance, preference or constraint that the best answer to some of TASKS depends on. The tiny Oracle's
# personas are not like this: they run several traits into one sentence, or stop mid-sentence. Keyed by split
# (A and B for training, test for evaluation); each is (name, text), opening "I'm NAME." in capitals like
# SEED_PERSONAS, with names found in neither SEED_PERSONAS nor PERSONA_NAMES.
WRITTEN_PERSONAS: dict[str, tuple[tuple[str, str], ...]] = {
    "A": (
        (
            "Bruno",
            (
                "I'm BRUNO. I'm 46 and drive a delivery van for a bakery. "
                "I live with my wife and our two teenage sons in a rented flat in Porto, Portugal. "
                "On Sundays I go sea fishing off the harbour wall with my brother. "
                "A slipped disc means I can't lift heavy things or sit for long without pain. "
                "We are paying off a car loan, so there is almost no spare money until next spring. "
                "I like short, plain advice and lose patience with long explanations."
            ),
        ),
        (
            "Colette",
            (
                "I'm COLETTE. I'm 68 and retired last year after forty years as a hospital pharmacist. "
                "I live alone with my old beagle in a bungalow on the edge of Winnipeg, Canada. "
                "I bake bread every weekend and give most of it away to my neighbours. "
                "My cholesterol is high, so my doctor wants me to cut down on butter and red meat. "
                "I stopped driving after dark because my night vision has got poor. "
                "I enjoy learning new things but want them explained step by step."
            ),
        ),
        (
            "Desmond",
            (
                "I'm DESMOND. I'm 23 and work as a junior software tester while finishing a part-time degree. "
                "I share a flat in Manchester, England, with three friends from school. "
                "I play bass guitar in a band that rehearses on Thursday nights. "
                "I owe about eight thousand pounds on a credit card I used while I was out of work. "
                "I'm a night owl and can rarely get out of bed before nine. "
                "I like ideas I can try straight away and get bored by long reading lists."
            ),
        ),
        (
            "Chiamaka",
            (
                "I'm CHIAMAKA. I'm 37 and run a small tailoring shop in Enugu, Nigeria. "
                "I live with my six-year-old son and my younger sister. "
                "I sing in my church choir and rehearse with them twice a week. "
                "The power goes off most evenings, so I can't count on electricity after dark. "
                "I keep to a strict monthly budget, and school fees come first. "
                "I'm sociable and like plans that involve other people."
            ),
        ),
        (
            "Gustavo",
            (
                "I'm GUSTAVO. I'm 52 and work as an accountant for a cement company in Monterrey, Mexico. "
                "My wife and I live with her elderly father, who needs help getting around. "
                "I collect vinyl records, mostly old boleros and jazz. "
                "I had a heart stent fitted two years ago, and my cardiologist allows only gentle exercise. "
                "I can only take holidays in July, when the office closes for two weeks. "
                "I'm careful by nature and like to compare options before deciding anything."
            ),
        ),
        (
            "Halima",
            (
                "I'm HALIMA. I'm 29 and teach maths at a secondary school in Mombasa, Kenya. "
                "I live with my parents and three younger brothers in the family house. "
                "I eat only halal food and never drink alcohol. "
                "I love drawing henna designs and would like to earn some money from them. "
                "I send a third of my salary to my grandmother every month. "
                "I'm shy with strangers and prefer to practise something alone before doing it in public."
            ),
        ),
        (
            "Ivo",
            (
                "I'm IVO. I'm 34 and work as a mechanic on the car ferries out of Split, Croatia. "
                "I live alone in a studio flat near the port. "
                "I'm training for my first half marathon and run along the coast most evenings. "
                "I'm lactose intolerant, so milk, cream and soft cheese make me ill. "
                "My shifts run two weeks on and one week off, so my free time comes in blocks. "
                "I stick with things better when there is a score or a target to beat."
            ),
        ),
        (
            "Jorunn",
            (
                "I'm JORUNN. I'm 81 and skippered a fishing boat until I retired. "
                "I live with my daughter's family on a farm outside Tromso, Norway. "
                "I knit every evening and sell my sweaters at the Christmas market. "
                "I walk with a frame since a hip replacement that never healed well. "
                "My hearing is poor, so phone calls and noisy places wear me out. "
                "I'm stubborn and only take advice when someone explains why it works."
            ),
        ),
    ),
    "B": (
        (
            "Kasimir",
            (
                "I'm KASIMIR. I'm 31 and run the night shift at a parcel warehouse near Lodz, Poland. "
                "I live with my girlfriend, who is expecting our first baby in March. "
                "I build and paint model tanks and aircraft in my spare time. "
                "We are saving for a bigger flat, so we have cut all spending that isn't essential. "
                "I sleep during the day and struggle to keep a regular routine. "
                "I like detailed plans with numbers and checklists."
            ),
        ),
        (
            "Lotte",
            (
                "I'm LOTTE. I'm 44 and work three days a week in a flower shop in Utrecht, the Netherlands. "
                "I'm divorced and have my two daughters, aged nine and eleven, every other week. "
                "I have been vegan for fifteen years. "
                "I cycle everywhere and have never owned a car. "
                "Migraines put me in bed for a day or two about once a month. "
                "I respond better to gentle encouragement than to strict rules."
            ),
        ),
        (
            "Wendell",
            (
                "I'm WENDELL. I'm 39 and teach high school chemistry in a small town in Ohio. "
                "I live with my husband and his teenage son from his first marriage. "
                "I'm a keen amateur astronomer and spend clear nights out with my telescope. "
                "I'm allergic to peanuts and tree nuts, badly enough to carry an adrenaline injector. "
                "My summers are free, but during term I have no free weekday evenings. "
                "I'm sceptical and want to see the evidence behind a recommendation."
            ),
        ),
        (
            "Tatsuya",
            (
                "I'm TATSUYA. I'm 26 and work as a junior architect at a firm in Osaka, Japan. "
                "I live alone in a one-room apartment close to the office. "
                "My kitchen has a single hot plate and no oven. "
                "I play futsal with colleagues on Friday nights. "
                "I usually get home after ten, so my weekday evenings are very short. "
                "I get overwhelmed easily and like to change one small thing at a time."
            ),
        ),
        (
            "Rosalind",
            (
                "I'm ROSALIND. I'm 57 and keep sheep on a hill farm on the Isle of Skye, Scotland. "
                "I live with my husband, and our grown-up children have moved to Glasgow. "
                "I read crime novels, usually two a week. "
                "The nearest supermarket is an hour's drive away. "
                "Our income depends on lamb prices, so some years are very lean. "
                "I'm practical and don't want to hear about gadgets or apps."
            ),
        ),
        (
            "Sadia",
            (
                "I'm SADIA. I'm 21 and study pharmacy at a university in Dhaka, Bangladesh. "
                "I live in a women's hostel and share a room with two other students. "
                "I love watching Korean dramas late into the night. "
                "My family pays my fees, and I get about three thousand taka a month to live on. "
                "I have asthma that flares up in dust and traffic fumes. "
                "I worry a lot before exams and like advice that reassures me."
            ),
        ),
        (
            "Teodor",
            (
                "I'm TEODOR. I'm 63 and drive a taxi at night in Bucharest, Romania. "
                "I live with my wife, and our son brings the grandchildren every Sunday. "
                "I grow tomatoes and peppers on our balcony. "
                "I have gout, so my doctor told me to avoid red meat and beer. "
                "I have never used a computer, only my phone. "
                "I'm cheerful and like advice with a bit of humour in it."
            ),
        ),
        (
            "Ugo",
            (
                "I'm UGO. I'm 35 and work in customer support for a bank in Turin, Italy. "
                "I have been blind since birth and get around with a guide dog. "
                "I live with my partner, who works rotating shifts as a nurse. "
                "I love audiobooks, especially long histories of ancient Rome. "
                "I earn a good salary and can spend freely on a holiday. "
                "I like to plan far ahead and hate last-minute changes."
            ),
        ),
    ),
    "test": (
        (
            "Vesna",
            (
                "I'm VESNA. I'm 48 and drive lorries across Europe, away from home five nights a week. "
                "When I'm not on the road I live alone in a small house in Maribor, Slovenia. "
                "I do a crossword at every rest stop. "
                "Years at the wheel have left me about fifteen kilos overweight. "
                "Most of my meals come from motorway service stations. "
                "I'm a loner and prefer things I can do on my own."
            ),
        ),
        (
            "Ximena",
            (
                "I'm XIMENA. I'm 30 and work as a tour guide at the ruins near Cusco, Peru. "
                "I live with my mother and my grandmother in the house I grew up in. "
                "I'm teaching myself to code from free online courses in the evenings. "
                "I have coeliac disease, so I can't eat anything with gluten. "
                "My income halves in the rainy season, when fewer tourists come. "
                "I'm ambitious and like advice that pushes me hard."
            ),
        ),
        (
            "Zdenek",
            (
                "I'm ZDENEK. I'm 72 and retired after designing railway bridges for forty years. "
                "I live with my wife in a flat in Brno, Czech Republic. "
                "I play chess online most afternoons. "
                "Since her stroke I look after my wife full time, "
                "so I can rarely leave the house for more than two hours. "
                "Our pensions cover the basics but leave little for extras. "
                "I'm methodical and like advice set out in numbered steps."
            ),
        ),
        (
            "Yolanda",
            (
                "I'm YOLANDA. I'm 41 and clean offices at night in Sydney, Australia. "
                "I share a rented house in the western suburbs with my two children and my cousin's family. "
                "I send money home to my parents in the Philippines every fortnight. "
                "I love hosting karaoke nights with big Filipino dinners for friends. "
                "I'm afraid of flying and have only been on a plane once. "
                "I'm talkative and like advice that feels like a chat with a friend."
            ),
        ),
    ),
}
